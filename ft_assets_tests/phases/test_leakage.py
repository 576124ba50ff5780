"""Train/test leakage: test prompts also in the training or validation data, found after normalising
case, whitespace and Unicode composition, and reported by preflight as a warning or an error."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from ft_assets.config import ConfigError, load_settings
from ft_assets.phases.datasets import DatasetError, Example
from ft_assets.phases.leakage import find_leaks, normalise_prompt
from ft_assets.preflight import preflight


def _example(prompt: str, index: int) -> Example:
    messages = ({"role": "user", "content": prompt}, {"role": "assistant", "content": "answer"})
    return Example(id=f"ex-{index}", messages=messages, row=index + 1)


def test_normalised_copies_leak_and_near_misses_do_not() -> None:
    decomposed = unicodedata.normalize("NFD", "Où est le café ?")
    train = [_example(p, i) for i, p in enumerate(["What is 2+2?", "東京はどこ？", decomposed, "Столица?"])]
    test_prompts = [
        "  WHAT is\t2+2? ",  # case and whitespace
        "東京はどこ？",  # identical, no spaces at all
        "Où est le café ?",  # composed vs decomposed
        "СТОЛИЦА?",  # Cyrillic case
        "What is 2+3?",  # different
        "東京はどこ",  # punctuation differs: not the same prompt
    ]
    test = [_example(p, i) for i, p in enumerate(test_prompts)]
    leaks = find_leaks(test, {"train": train, "validation": train[:1]})
    assert [leak.example.id for leak in leaks] == ["ex-0", "ex-1", "ex-2", "ex-3"]
    assert leaks[0].found_in == ("train", "validation") and leaks[1].found_in == ("train",)
    assert normalise_prompt(" A\u00a0 B\n") == "a b"  # no-break space is whitespace too


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def leaky_data(tmp_path: Path) -> dict[str, Path]:
    shared = ["Was ist die Hauptstadt von Österreich?", "日本の首都は？"]
    train = [{"id": f"t{i}", "question": q, "answer": "x"} for i, q in enumerate([*shared, "Other?"])]
    validation = [{"id": "v0", "question": "WAS IST DIE HAUPTSTADT VON ÖSTERREICH?", "answer": "Wien"}]
    test = [
        {"id": "test-a", "question": "Was ist die  Hauptstadt von Österreich?", "answer": "Wien"},
        {"id": "test-b", "question": "Something new?", "answer": "y"},
        {"id": "test-c", "question": "日本の首都は？", "answer": "東京"},
    ]
    return {
        "training_data_id": _jsonl(tmp_path / "train.jsonl", train),
        "validation_data_id": _jsonl(tmp_path / "validation.jsonl", validation),
        "testing_data_id": _jsonl(tmp_path / "test.jsonl", test),
    }


def _settings(write_config, data: dict[str, Path], **evaluator: object):
    overrides = {
        "fine_tuner": {
            "training_data_id": str(data["training_data_id"]),
            "validation_data_id": str(data["validation_data_id"]),
        },
        "inferencer": {"testing_data_id": str(data["testing_data_id"])},
        "evaluator": evaluator,
    }
    return load_settings(write_config(overrides))


def test_preflight_warns_about_leaked_test_prompts_by_default(write_config, leaky_data) -> None:
    report = preflight(_settings(write_config, leaky_data), phases={"finetuning", "evaluation"})
    [warning] = [item for item in report.warnings if "leakage" in item]
    assert "2 of 3 test prompts of [inferencer] testing_data_id" in warning
    assert f"'{leaky_data['testing_data_id']}'" in warning
    assert f"[fine_tuner] training_data_id = '{leaky_data['training_data_id']}' (2)" in warning
    assert f"[fine_tuner] validation_data_id = '{leaky_data['validation_data_id']}' (1)" in warning
    assert "row 1 (id 'test-a')" in warning and "row 3 (id 'test-c') '日本の首都は？'" in warning
    assert "test-b" not in warning and "[evaluator] leakage = 'error'" in warning


def test_leakage_error_stops_preflight_and_off_skips_it(write_config, leaky_data) -> None:
    with pytest.raises(DatasetError, match=r"train/test leakage: 2 of 3 test prompts") as caught:
        preflight(_settings(write_config, leaky_data, leakage="error"), phases={"evaluation"})
    assert "id 'test-a'" in str(caught.value) and "leakage = 'warn' to run anyway" in str(caught.value)
    report = preflight(_settings(write_config, leaky_data, leakage="off"), phases={"evaluation"})
    assert not any("leakage" in item for item in report.warnings)


def test_evaluation_only_preflight_reads_the_training_data_for_the_check(write_config, leaky_data) -> None:
    report = preflight(_settings(write_config, leaky_data), phases={"evaluation"})
    assert [d.key for d in report.datasets] == ["[inferencer] testing_data_id"]  # not a training check
    assert any("2 of 3 test prompts" in item for item in report.warnings)
    leaky_data["training_data_id"].write_text("not json\n")
    report = preflight(_settings(write_config, leaky_data), phases={"evaluation"})
    [warning] = [item for item in report.warnings if "leakage" in item]
    assert warning.startswith("train/test leakage not checked: [fine_tuner] training_data_id")


def test_a_bad_leakage_value_names_the_section_and_key(write_config) -> None:
    with pytest.raises(ConfigError, match=r"\[evaluator\] leakage: .*'warn'.*\(got 'loud'\)"):
        load_settings(write_config({"evaluator": {"leakage": "loud"}}))
