"""Dataset loading and normalisation, on real files written into tmp_path."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ft_assets.config_sections import DatasetColumns
from ft_assets.phases import datasets as ds
from ft_assets.phases.dataset_files import data_version
from ft_assets.phases.datasets import (
    BadRow,
    DatasetError,
    Example,
    check_bad_rows,
    load_dataset,
    split_validation,
)

QA_ROWS = [
    {"id": 7, "question": "What is 2+2?", "answer": "4"},
    {"question": "Capital of France?", "answer": "Paris"},
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def load(tmp_path: Path, name: str, **kwargs: Any):
    columns = kwargs.pop("columns", DatasetColumns())
    return load_dataset(name, columns, base_dir=tmp_path, **kwargs)


def turns(example: Example) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in example.messages]


# ------------------------------------------------------------------------------------------ file types


def test_qa_jsonl_rows_become_conversations(tmp_path: Path) -> None:
    # A blank line keeps the JSONL line numbering honest: row numbers are file line numbers.
    (tmp_path / "qa.jsonl").write_text(json.dumps(QA_ROWS[0]) + "\n\n" + json.dumps(QA_ROWS[1]) + "\n")
    loaded = load(tmp_path, "qa.jsonl")

    assert loaded.format == "qa"
    assert loaded.source == "qa.jsonl"
    assert loaded.resolved == str(tmp_path / "qa.jsonl")
    assert loaded.num_rows == 2 and loaded.bad_rows == []
    first, second = loaded.examples
    assert (first.id, first.row, second.id, second.row) == ("7", 1, "row-3", 3)
    assert turns(first) == [("user", "What is 2+2?"), ("assistant", "4")]
    assert first.user_prompt == "What is 2+2?"
    assert first.ground_truth == "4"
    assert first.system_prompt is None
    assert first.prompt_messages() == [{"role": "user", "content": "What is 2+2?"}]


@pytest.mark.parametrize("wrap", [False, True], ids=["list", "data-key"])
def test_json_list_and_data_key(tmp_path: Path, wrap: bool) -> None:
    document: Any = {"data": QA_ROWS} if wrap else QA_ROWS
    (tmp_path / "qa.json").write_text(json.dumps(document))
    loaded = load(tmp_path, "qa.json")
    assert [e.ground_truth for e in loaded.examples] == ["4", "Paris"]
    assert [e.row for e in loaded.examples] == [1, 2]


def test_json_of_another_shape_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "odd.json").write_text(json.dumps({"rows": QA_ROWS}))
    with pytest.raises(DatasetError, match=r"odd\.json: expected a JSON list"):
        load(tmp_path, "odd.json")


def test_csv_with_an_empty_cell_reports_the_row(tmp_path: Path) -> None:
    with (tmp_path / "qa.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["question", "answer"], ["Q one", "A one"], ["", "A two"], ["Q, three", "A three"]])
    loaded = load(tmp_path, "qa.csv", columns=DatasetColumns(on_bad_rows="drop"))
    assert [e.user_prompt for e in loaded.examples] == ["Q one", "Q, three"]
    assert loaded.bad_rows == [BadRow(row=2, reason="empty value", column="question")]


def test_parquet_file_and_directory_of_shards(tmp_path: Path) -> None:
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pq.write_table(pa.Table.from_pylist([{"messages": conversation}]), tmp_path / "one.parquet")
    loaded = load(tmp_path, "one.parquet")
    assert loaded.format == "messages"
    assert turns(loaded.examples[0]) == [("user", "hi"), ("assistant", "hello")]

    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist(QA_ROWS[1:]), shards / "part-1.parquet")
    pq.write_table(pa.Table.from_pylist(QA_ROWS[:1]), shards / "part-0.parquet")
    loaded = load(tmp_path, "shards")
    # Shards are read in sorted name order and numbered continuously.
    assert [(e.id, e.row, e.ground_truth) for e in loaded.examples] == [("7", 1, "4"), ("row-2", 2, "Paris")]

    before = data_version("shards", base_dir=tmp_path)
    pq.write_table(pa.Table.from_pylist(QA_ROWS), shards / "part-1.parquet")
    assert data_version("shards", base_dir=tmp_path) != before


def test_unsupported_file_type(tmp_path: Path) -> None:
    (tmp_path / "rows.txt").write_text("question\n")
    with pytest.raises(DatasetError, match=r"rows\.txt: unsupported file type '\.txt'"):
        load(tmp_path, "rows.txt")


# ------------------------------------------------------------------------------------------ formats


def test_messages_format_with_contexts(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First?"},
            {"role": "assistant", "content": "One."},
            {"role": "user", "content": "Second?"},
            {"role": "assistant", "content": "Two."},
        ],
        "contexts": ["doc a", "doc b"],
    }
    example = load(tmp_path, write_jsonl(tmp_path / "chat.jsonl", [row]).name).examples[0]
    assert example.system_prompt == "Be brief."
    assert example.user_prompt == "Second?"
    assert example.ground_truth == "Two."
    assert example.contexts == ("doc a", "doc b")
    assert [m["content"] for m in example.prompt_messages()] == ["Be brief.", "First?", "One.", "Second?"]


def test_sharegpt_roles_are_normalised(tmp_path: Path) -> None:
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "Sys"},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
            ]
        },
        {"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    ]
    loaded = load(tmp_path, write_jsonl(tmp_path / "sg.jsonl", rows).name)
    assert loaded.format == "sharegpt"
    assert turns(loaded.examples[0]) == [("system", "Sys"), ("user", "Hi"), ("assistant", "Hello")]
    assert turns(loaded.examples[1]) == [("user", "Q"), ("assistant", "A")]


def test_alpaca_joins_instruction_and_input(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    loaded = load(tmp_path, write_jsonl(tmp_path / "alpaca.jsonl", rows).name)
    assert loaded.format == "alpaca"
    assert turns(loaded.examples[0]) == [("user", "Translate to French.\n\ncat"), ("assistant", "chat")]
    assert turns(loaded.examples[1]) == [("user", "Say hi."), ("assistant", "hi")]


def test_prompt_completion_strings_and_message_lists(tmp_path: Path) -> None:
    rows = [
        {"prompt": "2+2=", "completion": "4"},
        {
            "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "3+3="}],
            "completion": [{"role": "assistant", "content": "6"}],
        },
        {
            "prompt": "x",
            "completion": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
        },
    ]
    loaded = load(
        tmp_path, write_jsonl(tmp_path / "pc.jsonl", rows).name, columns=DatasetColumns(on_bad_rows="drop")
    )
    assert loaded.format == "prompt_completion"
    assert turns(loaded.examples[0]) == [("user", "2+2="), ("assistant", "4")]
    assert turns(loaded.examples[1]) == [("system", "S"), ("user", "3+3="), ("assistant", "6")]
    assert [(b.row, b.column) for b in loaded.bad_rows] == [(3, "completion")]
    assert "exactly one assistant message" in loaded.bad_rows[0].reason


def test_text_format(tmp_path: Path) -> None:
    loaded = load(tmp_path, write_jsonl(tmp_path / "t.jsonl", [{"text": "Once upon a time"}]).name)
    example = loaded.examples[0]
    assert loaded.format == "text"
    assert (example.text, example.messages, example.ground_truth) == ("Once upon a time", (), None)


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "P", "completion": "C"}]).name
    assert load(tmp_path, name).format == "prompt_completion"
    columns = DatasetColumns(dataset_format="qa", question_column="prompt", ground_truth_column="completion")
    loaded = load(tmp_path, name, columns=columns)
    assert loaded.format == "qa"
    assert turns(loaded.examples[0]) == [("user", "P"), ("assistant", "C")]


def test_configured_question_column_wins_auto_detection(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "P", "text": "T", "target": "G"}]).name
    columns = DatasetColumns(question_column="text", ground_truth_column="target")
    loaded = load(tmp_path, name, columns=columns)
    assert loaded.format == "qa"
    assert turns(loaded.examples[0]) == [("user", "T"), ("assistant", "G")]


def test_undetectable_format_names_file_and_keys(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "odd.jsonl", [{"qestion": "Q", "answer": "A"}]).name
    with pytest.raises(DatasetError) as caught:
        load(tmp_path, name)
    message = str(caught.value)
    assert str(tmp_path / "odd.jsonl") in message
    assert "['answer', 'qestion']" in message
    assert "did you mean 'qestion'" in message


# ------------------------------------------------------------------------------------------ system prompt


def test_system_prompt_precedence_override_then_column_then_none(tmp_path: Path) -> None:
    rows = [
        {"question": "Q1", "answer": "A1", "sys": "From column"},
        {"question": "Q2", "answer": "A2", "sys": ""},
    ]
    name = write_jsonl(tmp_path / "qa.jsonl", rows).name
    by_column = load(tmp_path, name, columns=DatasetColumns(system_prompt_column="sys")).examples
    assert [e.system_prompt for e in by_column] == ["From column", None]
    assert turns(by_column[0])[0] == ("system", "From column")

    both = DatasetColumns(system_prompt_column="sys", system_prompt_override_text="Override")
    assert [e.system_prompt for e in load(tmp_path, name, columns=both).examples] == ["Override", "Override"]
    assert [e.system_prompt for e in load(tmp_path, name).examples] == [None, None]


def test_system_override_replaces_or_inserts_in_chat_formats(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "system", "content": "Old"}, {"role": "user", "content": "U"}]},
        {"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]},
    ]
    name = write_jsonl(tmp_path / "chat.jsonl", rows).name
    loaded = load(tmp_path, name, columns=DatasetColumns(system_prompt_override_text="New"))
    assert turns(loaded.examples[0]) == [("system", "New"), ("user", "U")]
    assert turns(loaded.examples[1]) == [("system", "New"), ("user", "U"), ("assistant", "A")]


# ------------------------------------------------------------------------------------------ bad rows


BAD_CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},
    {"messages": [{"role": "tool", "content": "x"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": []},
    {"messages": [{"role": "assistant", "content": "no question"}]},
    {"messages": [{"role": "user", "content": "unanswered"}]},
]


def test_bad_rows_raise_with_count_rows_and_reasons(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "chat.jsonl", BAD_CHAT_ROWS).name
    with pytest.raises(DatasetError) as caught:
        load(tmp_path, name, require_ground_truth=True)
    message = str(caught.value)
    assert f"{tmp_path / 'chat.jsonl'}: 5 of 6 rows are unusable" in message
    assert "row 2 [messages]: messages[0].role: unknown role 'tool'" in message
    assert "row 3 [messages]: messages[0].content: expected a string, got int" in message
    assert "row 4 [messages]: expected a non-empty list of messages" in message
    assert "row 5 [messages]: the conversation has no user turn" in message
    assert "row 6 [messages]: the conversation ends on a user turn" in message
    assert "on_bad_rows = 'drop'" in message


def test_bad_rows_dropped_under_drop_policy(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "chat.jsonl", BAD_CHAT_ROWS).name
    loaded = load(tmp_path, name, columns=DatasetColumns(on_bad_rows="drop"))
    # Without require_ground_truth an unanswered conversation is fine (inference on unlabelled data).
    assert [e.row for e in loaded.examples] == [1, 6]
    assert loaded.examples[1].ground_truth is None
    assert [b.row for b in loaded.bad_rows] == [2, 3, 4, 5]
    assert loaded.num_rows == 6


def test_every_row_bad_is_an_error_even_when_dropping(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "qa.jsonl", [{"question": "", "answer": "A"}]).name
    with pytest.raises(DatasetError, match=r"all 1 rows are unusable: row 1 \[question\]: empty value"):
        load(tmp_path, name, columns=DatasetColumns(on_bad_rows="drop"))


def test_wrong_types_and_duplicate_ids_are_bad_rows(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "question": "Q", "answer": 4},
        {"id": "a", "question": "Q", "answer": "A"},
        {"id": "a", "question": "Q2", "answer": "A2"},
        {"id": "b", "question": "Q3", "answer": "A3", "contexts": "not a list"},
    ]
    name = write_jsonl(tmp_path / "qa.jsonl", rows).name
    loaded = load(tmp_path, name, columns=DatasetColumns(on_bad_rows="drop"))
    assert [(b.row, b.column) for b in loaded.bad_rows] == [(1, "answer"), (3, "id"), (4, "contexts")]
    assert loaded.bad_rows[0].reason == "expected a string, got int"
    assert loaded.bad_rows[1].reason == "duplicate id 'a' (first in row 2)"


def test_check_bad_rows_lists_the_first_ten() -> None:
    bad = [BadRow(row=n, reason="empty value", column="answer") for n in range(1, 15)]
    assert check_bad_rows(bad, policy="drop", source="f.jsonl", total=20) is bad
    assert check_bad_rows([], policy="error", source="f.jsonl", total=20) == []
    with pytest.raises(DatasetError) as caught:
        check_bad_rows(bad, policy="error", source="f.jsonl", total=20)
    message = str(caught.value)
    assert message.startswith("f.jsonl: 14 of 20 rows are unusable")
    assert "row 10 [answer]: empty value" in message
    assert "row 11 " not in message
    assert message.endswith("and 4 more")
    with pytest.raises(DatasetError, match="unknown on_bad_rows policy 'skip'"):
        check_bad_rows(bad, policy="skip", source="f.jsonl", total=20)


# ------------------------------------------------------------------------------------------ columns


def test_missing_column_names_it_and_suggests(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS).name
    columns = DatasetColumns(dataset_format="qa", question_column="questoin")
    with pytest.raises(DatasetError) as caught:
        load(tmp_path, name, columns=columns)
    message = str(caught.value)
    assert "column 'questoin' (from question_column) is in no row" in message
    assert "['id', 'question', 'answer']" in message
    assert "did you mean 'question'?" in message


def test_ground_truth_column_optional_unless_required(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q1"}, {"question": "Q2"}]).name
    loaded = load(tmp_path, name)
    assert [turns(e) for e in loaded.examples] == [[("user", "Q1")], [("user", "Q2")]]
    assert loaded.examples[0].ground_truth is None
    assert loaded.examples[0].prompt_messages() == [{"role": "user", "content": "Q1"}]
    with pytest.raises(DatasetError, match=r"column 'answer' \(from ground_truth_column\) is in no row"):
        load(tmp_path, name, require_ground_truth=True)


# ------------------------------------------------------------------------------------------ file errors


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text(json.dumps(QA_ROWS[0]) + "\n" + json.dumps(QA_ROWS[1]) + "\n{oops\n")
    with pytest.raises(DatasetError, match=r"bad\.jsonl: line 3: malformed JSON"):
        load(tmp_path, "bad.jsonl")


def test_row_that_is_not_an_object(tmp_path: Path) -> None:
    name = write_jsonl(tmp_path / "list.jsonl", [QA_ROWS[0], ["a", "b"]]).name
    with pytest.raises(DatasetError, match=r"list\.jsonl: row 2: expected an object, got list"):
        load(tmp_path, name)


@pytest.mark.parametrize(
    ("name", "content"), [("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "question,answer\n")]
)
def test_empty_file_names_it(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=rf"{tmp_path / name}: the dataset is empty"):
        load(tmp_path, name)


@pytest.mark.parametrize("name", ["missing.jsonl", "sub/missing.jsonl"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match=rf"^dataset file not found: {tmp_path / name}$"):
        load(tmp_path, name)
    with pytest.raises(DatasetError, match="dataset file not found"):
        data_version(name, base_dir=tmp_path)


def test_hub_id_offline_is_a_dataset_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    # Both libraries read the offline switch at import time; set it where they look now, so the test never
    # waits on network timeouts whatever the surrounding environment.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    with pytest.raises(DatasetError) as caught:
        load(tmp_path, "someowner/some-dataset", revision="abc123", split="test")
    message = str(caught.value)
    assert message.startswith("hub dataset 'someowner/some-dataset' (revision abc123, split 'test')")
    assert data_version("someowner/some-dataset", base_dir=tmp_path, revision="abc123") == "hf:abc123"
    assert data_version("someowner/some-dataset", base_dir=tmp_path) == "hf:main"


def test_existing_local_path_wins_over_hub_lookalike(tmp_path: Path) -> None:
    (tmp_path / "owner").mkdir()
    write_jsonl(tmp_path / "owner" / "name", QA_ROWS)
    with pytest.raises(DatasetError, match=r"owner/name: unsupported file type ''"):
        load(tmp_path, "owner/name")


# ------------------------------------------------------------------------------------------ versions, splits


def test_data_version_is_the_file_hash_and_follows_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    version = data_version("qa.jsonl", base_dir=tmp_path)
    assert version == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert data_version(str(path), base_dir=Path("/")) == version
    assert load(tmp_path, "qa.jsonl").content_hash == version
    write_jsonl(path, [*QA_ROWS, {"question": "Q3", "answer": "A3"}])
    assert data_version("qa.jsonl", base_dir=tmp_path) != version


def make_examples(count: int) -> list[Example]:
    return [
        Example(id=f"e{i}", messages=({"role": "user", "content": f"q{i}"},), row=i)
        for i in range(1, count + 1)
    ]


def test_split_validation_is_deterministic_and_disjoint() -> None:
    examples = make_examples(50)
    train, validation = split_validation(examples, 0.2, seed=3)
    assert (len(train), len(validation)) == (40, 10)
    assert {e.id for e in train}.isdisjoint(e.id for e in validation)
    assert sorted([*train, *validation], key=lambda e: e.row) == examples
    assert [e.row for e in train] == sorted(e.row for e in train)
    assert split_validation(examples, 0.2, seed=3) == (train, validation)
    assert split_validation(examples, 0.2, seed=4)[1] != validation
    assert split_validation(examples, 0.0, seed=3) == (examples, [])
    assert len(split_validation(make_examples(3), 0.01, seed=3)[1]) == 1
    with pytest.raises(DatasetError, match="leaves no examples for training"):
        split_validation(make_examples(1), 0.5, seed=3)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_summarises_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "train.jsonl", QA_ROWS)
    write_jsonl(tmp_path / "test.jsonl", [{"question": "Q"}, {"question": ""}])
    config = tmp_path / "pipeline.toml"
    config.write_text(
        '[fine_tuner]\ntraining_data_id = "train.jsonl"\nvalidation_data_id = "train.jsonl"\n'
        '[inferencer]\ntesting_data_id = "test.jsonl"\non_bad_rows = "drop"\n'
    )
    assert ds.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "fine_tuner.training_data_id: train.jsonl" in out
    assert "fine_tuner.validation_data_id: train.jsonl" in out
    assert "inferencer.testing_data_id: test.jsonl" in out
    assert "2 read, 1 usable, 1 dropped" in out
    assert "row 2 [question]: empty value" in out
    assert "sha256:" + hashlib.sha256((tmp_path / "train.jsonl").read_bytes()).hexdigest() in out


def test_cli_reports_an_unusable_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    assert ds.main(["--source", str(tmp_path / "bad.jsonl")]) == 1
    assert "line 1: malformed JSON" in capsys.readouterr().err
