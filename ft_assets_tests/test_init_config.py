"""``ft-pipeline init``: a commented config for one's own data, that loads and passes preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_assets.cli import main
from ft_assets.config import load_settings
from ft_assets.preflight import preflight


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(
        folder / "train.jsonl",
        [
            {"query": "Wie heißt die Hauptstadt von Österreich?", "response": "Wien", "system": "Sei kurz."},
            {"query": "日本の首都は?", "response": "東京", "system": "簡潔に。"},
        ],
    )
    write_jsonl(folder / "test.jsonl", [{"query": "Столица Франции?", "response": "Париж"}])
    write_jsonl(
        folder / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "¿Hola?"}, {"role": "assistant", "content": "¡Hola!"}]}],
    )
    return folder


def test_init_writes_a_commented_config_that_loads_and_passes_preflight(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine.toml"
    assert (
        main(
            [
                "init",
                "--train",
                str(data / "train.jsonl"),
                "--test",
                str(data / "test.jsonl"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text(encoding="utf-8")
    assert (
        "# train.jsonl: 2 rows, format 'qa' (detected); question column 'query', answer column 'response'"
        in text
    )
    assert 'training_data_id = "data/train.jsonl"' in text and 'testing_data_id = "data/test.jsonl"' in text
    settings = load_settings(out)
    tuner, inferencer = settings.fine_tuner, settings.inferencer
    assert (tuner.question_column, tuner.ground_truth_column, tuner.system_prompt_column) == (
        "query",
        "response",
        "system",
    )
    # the test set has no system column: the config says so ("" stops the inheritance from [fine_tuner])
    assert (inferencer.question_column, inferencer.system_prompt_column) == ("query", "")
    report = preflight(settings)
    assert "[fine_tuner] training_data_id: 2 usable rows (qa)" in report.passed
    assert "[inferencer] testing_data_id: 1 usable rows (qa)" in report.passed
    assert f"wrote {out}" in capsys.readouterr().out


def test_init_refuses_to_overwrite_without_force(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.toml"
    out.write_text("# mine\n")
    argv = [
        "init",
        "--train",
        str(data / "chat.jsonl"),
        "--test",
        str(data / "chat.jsonl"),
        "--out",
        str(out),
    ]
    assert main(argv) == 1
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "# mine\n"
    assert main([*argv, "--force"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "format 'messages' (detected)" in text and "question_column" not in text
    assert load_settings(out).fine_tuner.training_data_id == "data/chat.jsonl"


def test_init_names_the_file_and_columns_it_cannot_map(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = write_jsonl(data / "odd.jsonl", [{"frage": "Wer?", "antwort": "Ich"}])
    out = tmp_path / "odd.toml"
    assert main(["init", "--train", str(odd), "--test", str(odd), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert str(odd) in error and "['frage', 'antwort']" in error and "--question-column" in error
    assert not out.exists()
    named = ["--question-column", "frage", "--answer-column", "antwort"]
    assert main(["init", "--train", str(odd), "--test", str(odd), "--out", str(out), *named]) == 0
    assert load_settings(out).inferencer.ground_truth_column == "antwort"
