"""The dataset table drives every site that names a dataset: relocation, the assets, the loader, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

import ft_assets.config as config_module
from ft_assets.assets import data as data_assets
from ft_assets.config import build_settings, load_settings, read_toml, relocated_config
from ft_assets.dataset_specs import COLUMN_INHERITANCE, DATASETS, TESTING, TRAINING, VALIDATION
from ft_assets.phases import datasets as datasets_cli
from ft_assets.phases.datasets import DatasetError, load_configured

PROMPT = "Réponds en une ligne — 谢谢."


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def rows(prefix: str, count: int = 3, *, question: str = "q", answer: str = "a") -> list[dict[str, Any]]:
    return [{question: f"{prefix} Frage {i} ½?", answer: f"{prefix} Antwort {i}"} for i in range(count)]


def test_the_table_names_each_dataset_once() -> None:
    assert [spec.name for spec in DATASETS] == ["training", "validation", "testing"]
    assert [spec.config_key for spec in DATASETS] == [
        "[fine_tuner] training_data_id",
        "[fine_tuner] validation_data_id",
        "[inferencer] testing_data_id",
    ]
    assert [spec.asset for spec in DATASETS] == ["training_dataset", "validation_dataset", "testing_dataset"]
    assert [spec.labelled for spec in DATASETS] == [True, True, False]
    assert COLUMN_INHERITANCE == (("inferencer", "fine_tuner"),)
    assert "[fine_tuner]" in TESTING.describe_columns() and "trained with" in TESTING.describe_columns()
    assert TRAINING.describe_columns() == VALIDATION.describe_columns()


def test_the_dagster_source_assets_are_the_table(tmp_path: Path) -> None:
    sources = {
        asset.key: asset
        for asset in vars(data_assets).values()
        if isinstance(asset, dg.SourceAsset) and asset.group_name == "data"
    }
    assert set(sources) == {data_assets.asset_key(spec) for spec in DATASETS}
    for spec in DATASETS:
        assert f"{spec.section}.{spec.key}" in (sources[data_assets.asset_key(spec)].description or "")
    train = write_jsonl(tmp_path / "train.jsonl", rows("t", question="question", answer="answer"))
    settings = build_settings(
        {"fine_tuner": {"training_data_id": train}, "inferencer": {"testing_data_id": "org/eval"}}
    )
    assert data_assets.local_path(TRAINING, settings) == Path(train)
    assert data_assets.local_path(TESTING, settings) is None  # a hub id
    assert data_assets.dataset_version(VALIDATION, settings) == data_assets.NO_DATASET_VERSION


def test_relocation_reads_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    (project / "data").mkdir()
    for name in ("train", "validation", "test"):
        (project / "data" / f"{name}.jsonl").write_text("{}\n")
    source = project / "config" / "run.toml"
    source.write_text(
        '[fine_tuner]\ntraining_data_id = "data/train.jsonl"\nvalidation_data_id = "data/validation.jsonl"\n'
        '[inferencer]\ntesting_data_id = "data/test.jsonl"\n'
    )
    data = read_toml(relocated_config(source, tmp_path / "all.toml", outputs_root=tmp_path / "out"))
    for spec in DATASETS:
        assert Path(data[spec.section][spec.key]).is_absolute(), spec
    # a dataset the table did not list would not be relocated: the table is what relocation reads
    monkeypatch.setattr(config_module, "DATASETS", (TRAINING,))
    data = read_toml(relocated_config(source, tmp_path / "one.toml", outputs_root=tmp_path / "out"))
    assert data["fine_tuner"]["training_data_id"] == str(project / "data" / "train.jsonl")
    assert data["inferencer"]["testing_data_id"] == "data/test.jsonl"


def test_a_bad_value_names_its_section_and_key(tmp_path: Path) -> None:
    settings = build_settings({"inferencer": {"testing_data_id": "missing.jsonl"}}, base_dir=tmp_path)
    with pytest.raises(DatasetError) as raised:
        load_configured(TESTING, settings)
    assert str(raised.value).startswith("[inferencer] testing_data_id = 'missing.jsonl': ")
    unset = build_settings({"fine_tuner": {"training_data_id": ""}}, base_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"^\[fine_tuner\] training_data_id is not set$"):
        load_configured(TRAINING, unset)
    # labelled comes from the table: a test row without an answer is fine, a training row is not
    unlabelled = write_jsonl(tmp_path / "open.jsonl", [{"question": "Wohin?"}])
    settings = build_settings(
        {"fine_tuner": {"training_data_id": unlabelled}, "inferencer": {"testing_data_id": unlabelled}}
    )
    assert load_configured(TESTING, settings).examples[0].ground_truth is None
    with pytest.raises(DatasetError, match=r"^\[fine_tuner\] training_data_id = .*open\.jsonl"):
        load_configured(TRAINING, settings)
    assert load_configured(TRAINING, settings, labelled=False).examples[0].user_prompt == "Wohin?"


def test_validation_and_testing_sets_take_the_training_columns_unless_their_section_sets_them(
    tmp_path: Path,
) -> None:
    columns = {"question_column": "frage", "ground_truth_column": "antwort"}
    paths = {
        spec: write_jsonl(
            tmp_path / f"{spec.name}.jsonl", rows(spec.name, question="frage", answer="antwort")
        )
        for spec in DATASETS
    }
    training_section = {
        **columns,
        "system_prompt_override_text": PROMPT,
        "training_data_id": paths[TRAINING],
        "validation_data_id": paths[VALIDATION],
    }
    settings = build_settings(
        {"fine_tuner": training_section, "inferencer": {"testing_data_id": paths[TESTING]}}
    )
    for spec in DATASETS:
        loaded = load_configured(spec, settings)
        assert {example.system_prompt for example in loaded.examples} == {PROMPT}, spec
        assert loaded.examples[0].user_prompt == f"{spec.name} Frage 0 ½?"
        assert loaded.examples[0].ground_truth == f"{spec.name} Antwort 0"

    # the test set's own section wins; the validation set has none of its own and keeps [fine_tuner]'s
    own = build_settings(
        {
            "fine_tuner": training_section,
            "inferencer": {"testing_data_id": paths[TESTING], "system_prompt_override_text": "Kurz."},
        }
    )
    assert {e.system_prompt for e in load_configured(TESTING, own).examples} == {"Kurz."}
    assert {e.system_prompt for e in load_configured(VALIDATION, own).examples} == {PROMPT}
    # a column mapping passed in (a model's trained prompt) replaces the section's
    replaced = own.inferencer.model_copy(update={"system_prompt_override_text": None})
    assert {e.system_prompt for e in load_configured(TESTING, own, columns=replaced).examples} == {None}


def test_the_cli_summarises_each_configured_dataset_by_its_table_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_jsonl(tmp_path / "train.jsonl", rows("t", question="question", answer="answer"))
    write_jsonl(tmp_path / "test.jsonl", [{"question": "Qué?"}])
    config = tmp_path / "pipeline.toml"
    config.write_text(
        '[fine_tuner]\ntraining_data_id = "train.jsonl"\n[inferencer]\ntesting_data_id = "test.jsonl"\n'
    )
    assert datasets_cli.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "training: fine_tuner.training_data_id: train.jsonl" in out
    assert "testing: inferencer.testing_data_id: test.jsonl" in out
    assert "validation:" not in out  # not configured
    assert f"  columns:      {TESTING.describe_columns()}" in out
    settings = load_settings(config)
    assert TESTING.source(settings) == "test.jsonl" and VALIDATION.source(settings) is None
    config.write_text(
        '[fine_tuner]\ntraining_data_id = "train.jsonl"\n[inferencer]\ntesting_data_id = "gone.jsonl"\n'
    )
    assert datasets_cli.main(["--config", str(config)]) == 1
    assert "[inferencer] testing_data_id = 'gone.jsonl'" in capsys.readouterr().err
