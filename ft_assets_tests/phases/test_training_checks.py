"""The fine-tuning phase's preflight checks, called directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ft_assets.config import ConfigError, build_settings
from ft_assets.config_sections import EMBEDDED_TINY
from ft_assets.phases.datasets import DatasetError
from ft_assets.phases.preflight_report import PreflightReport
from ft_assets.phases.training_checks import check_training, check_training_data, training_sets


def report() -> PreflightReport:
    return PreflightReport(("finetuning",))


def test_check_training_refuses_names_transformers_does_not_know() -> None:
    with pytest.raises(ConfigError) as raised:
        check_training(build_settings({"fine_tuner": {"optim": "adamw_torhc"}}), {}, report())
    assert str(raised.value).startswith(
        "[fine_tuner] optim = 'adamw_torhc' is not one transformers knows (did you mean 'adamw_torch'?)"
    )
    with pytest.raises(ConfigError, match=r"^\[fine_tuner\] lr_scheduler_type = 'cosinus' is not one"):
        check_training(build_settings({"fine_tuner": {"lr_scheduler_type": "cosinus"}}), {}, report())
    with pytest.raises(ConfigError, match="target_modules is an empty list"):
        check_training(build_settings({"fine_tuner": {"target_modules": []}}), {}, report())


def test_check_training_needs_a_token_to_push_and_warns_of_ignored_evaluation_keys() -> None:
    push = build_settings({"fine_tuner": {"push_to_hub": True, "hub_model_id": "org/modèle"}})
    with pytest.raises(ConfigError, match=r"push_to_hub = true needs a Hugging Face token"):
        check_training(push, {}, report())
    found = report()
    check_training(push, {"HF_TOKEN": "hf_x"}, found)
    assert found.passed == ["training config"]

    no_validation = build_settings({"fine_tuner": {"eval_steps": 5, "validation_split": 0.0}})
    found = report()
    check_training(no_validation, {}, found)
    assert any(
        w.startswith("[fine_tuner] eval_steps is set, but there is no validation data")
        for w in found.warnings
    )
    validated = report()
    check_training(build_settings({"fine_tuner": {"eval_steps": 5, "validation_split": 0.1}}), {}, validated)
    assert not any("no validation data" in w for w in validated.warnings)


def write_rows(path: Path, answers: list[str]) -> str:
    rows = [{"question": f"Frage {i}: wie heißt das?", "answer": answer} for i, answer in enumerate(answers)]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_check_training_data_records_the_sets_and_measures_rows_after_templating(
    tmp_path: Path, tiny_model: Any, model_cache: Path
) -> None:
    train = write_rows(tmp_path / "train.jsonl", ["kurz", "lang " * 200, "noch kürzer"])
    validation = write_rows(tmp_path / "validation.jsonl", ["ja"])
    section = {"base_model_id": EMBEDDED_TINY, "training_data_id": train, "max_length": 64}
    data = {
        "fine_tuner": {**section, "validation_data_id": validation},
        "pipeline": {"model_cache_dir": str(model_cache)},
    }

    # without a base model the rows are only loaded
    found = report()
    sets = check_training_data(build_settings(data), {}, found)
    assert list(sets) == ["[fine_tuner] training_data_id", "[fine_tuner] validation_data_id"]
    assert [(d.key, d.usable) for d in found.datasets] == [
        (key, n) for key, n in zip(sets, (3, 1), strict=True)
    ]

    found = report()
    found.base_model_dir = Path(tiny_model.path)
    with pytest.raises(DatasetError, match=r"^\[fine_tuner\] max_length = 64 / validation_split: "):
        check_training_data(build_settings(data), {}, found)
    dropping = {**data, "fine_tuner": {**data["fine_tuner"], "on_bad_rows": "drop"}}
    found = report()
    found.base_model_dir = Path(tiny_model.path)
    check_training_data(build_settings(dropping), {}, found)
    assert "[fine_tuner] max_length = 64: 1 rows are longer and are dropped" in found.warnings
    assert "training rows fit max_length = 64 after templating" in found.passed


def test_training_sets_leave_out_an_unset_validation_set_and_may_accept_unlabelled_rows(
    tmp_path: Path,
) -> None:
    unlabelled = tmp_path / "open.jsonl"
    unlabelled.write_text('{"question": "Warum?"}\n', encoding="utf-8")
    settings = build_settings({"fine_tuner": {"training_data_id": str(unlabelled)}})
    assert list(training_sets(settings, {}, labelled=False)) == ["[fine_tuner] training_data_id"]
    with pytest.raises(DatasetError, match=r"^\[fine_tuner\] training_data_id = "):
        training_sets(settings, {}, labelled=True)
