"""The label mask, token by token, for every dataset format: exactly the assistant tokens are trained.

The independent reference is transformers' own assistant mask (``return_assistant_tokens_mask``), which reads
the ``{% generation %}`` markers of the tiny model's ChatML template; the platform's mask does not use them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ft_assets.config_sections import DatasetColumns
from ft_assets.phases.datasets import load_dataset
from ft_assets.phases.label_masks import (
    IGNORE_INDEX,
    LabelMaskError,
    tokenize_example,
    trained_token_count,
)
from ft_assets.phases.models import CHATML_TEMPLATE, ResolvedModel, load_tokenizer

MULTI_TURN = [
    {"role": "system", "content": "Réponds brièvement."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Привет!"},
    {"role": "user", "content": "Capital of Japan?"},
    {"role": "assistant", "content": "東京。"},
]
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
#: format -> (one row in that format, the assistant answers it trains, the texts of its prompt turns)
ROWS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "qa": ({"question": "Où vit Maria ?", "answer": "À Lyon."}, ["À Lyon."]),
    "messages": ({"messages": MULTI_TURN}, ["Привет!", "東京。"]),
    "sharegpt": (
        {"conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in MULTI_TURN]},
        ["Привет!", "東京。"],
    ),
    "alpaca": ({"instruction": "Translate", "input": "cat", "output": "gato"}, ["gato"]),
    "prompt_completion": ({"prompt": "2 + 2 =", "completion": "4"}, ["4"]),
    "prompt_completion_messages": (
        {
            "prompt": MULTI_TURN[:4],
            "completion": [MULTI_TURN[4]],
        },
        ["Привет!", "東京。"],
    ),
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model: ResolvedModel) -> Any:
    return load_tokenizer(tiny_model.path)


def _example(tmp_path: Path, row: dict[str, Any]) -> Any:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n")
    return load_dataset(str(path), DatasetColumns(), base_dir=tmp_path, require_ground_truth=True).examples[0]


def _reference_mask(tokenizer: Any, messages: Any) -> tuple[list[int], list[int]]:
    encoded = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(encoded["input_ids"]), list(encoded["assistant_masks"])


def _trained_runs(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    runs: list[list[int]] = []
    for position, (token, label) in enumerate(zip(input_ids, labels, strict=True)):
        if label == IGNORE_INDEX:
            continue
        assert label == token
        if runs and labels[position - 1] != IGNORE_INDEX:
            runs[-1].append(token)
        else:
            runs.append([token])
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("name", list(ROWS))
def test_exactly_the_assistant_tokens_are_trained(tmp_path: Path, tokenizer: Any, name: str) -> None:
    row, answers = ROWS[name]
    example = _example(tmp_path, row)
    record = tokenize_example(example, tokenizer)
    ids, mask = _reference_mask(tokenizer, example.messages)
    assert record["input_ids"] == ids
    expected = [token if bit else IGNORE_INDEX for token, bit in zip(ids, mask, strict=True)]
    assert record["labels"] == expected
    # every assistant turn, each through its end-of-turn token; no system, user or template token
    assert _trained_runs(tokenizer, ids, record["labels"]) == [f"{answer}<|im_end|>" for answer in answers]
    assert trained_token_count(record["labels"]) == sum(mask)


@pytest.mark.parametrize("name", ["messages", "sharegpt"])
def test_last_turn_only_trains_the_final_answer(tmp_path: Path, tokenizer: Any, name: str) -> None:
    example = _example(tmp_path, ROWS[name][0])
    record = tokenize_example(example, tokenizer, turns="last")
    assert _trained_runs(tokenizer, record["input_ids"], record["labels"]) == ["東京。<|im_end|>"]
    every = tokenize_example(example, tokenizer, turns="all")
    assert trained_token_count(every["labels"]) > trained_token_count(record["labels"])


@pytest.mark.parametrize("name", list(ROWS))
def test_training_on_everything_labels_every_token(tmp_path: Path, tokenizer: Any, name: str) -> None:
    example = _example(tmp_path, ROWS[name][0])
    record = tokenize_example(example, tokenizer, responses_only=False)
    assert record["labels"] == record["input_ids"] == _reference_mask(tokenizer, example.messages)[0]
    assert tokenizer.decode(record["input_ids"]).startswith("<|im_start|>")


def test_text_rows_train_the_whole_text_and_its_eos(tmp_path: Path, tokenizer: Any) -> None:
    example = _example(tmp_path, {"text": "The quick brown fox — быстрая лиса"})
    record = tokenize_example(example, tokenizer)
    assert record["labels"] == record["input_ids"] == tokenizer(example.text + "<|im_end|>")["input_ids"]
    assert trained_token_count(record["labels"]) == len(record["input_ids"]) - 1, (
        "all but the unpredicted first"
    )


def test_templates_without_generation_markers_give_the_same_mask(tmp_path: Path, tiny_model: Any) -> None:
    plain = CHATML_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    marked = load_tokenizer(tiny_model.path)
    unmarked = load_tokenizer(tiny_model.path, chat_template=(plain, None))
    example = _example(tmp_path, ROWS["messages"][0])
    assert tokenize_example(example, unmarked) == tokenize_example(example, marked)


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path: Path, tiny_model: Any) -> None:
    # renders the final message differently from the same message followed by more turns
    rewriting = (
        "{% for m in messages %}{% if loop.last %}>>{% endif %}{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    tokenizer = load_tokenizer(tiny_model.path, chat_template=(rewriting, None))
    example = _example(tmp_path, ROWS["messages"][0])
    with pytest.raises(LabelMaskError, match="does not render the conversation incrementally at message 2"):
        tokenize_example(example, tokenizer)
