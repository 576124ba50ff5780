"""Padding-free packing is exact: a packed row gives each sequence the logits and loss it has alone."""

from __future__ import annotations

from typing import Any

import pytest

from ft_assets.phases.datasets import Example
from ft_assets.phases.label_masks import tokenize_example
from ft_assets.phases.models import ResolvedModel, load_tokenizer
from ft_assets.phases.packing import TrainingCollator, batch_token_count, block_diagonal_causal_mask

CONVERSATIONS = [
    ("What is the capital of France?", "Paris."),
    ("Wo wohnt Maria? Sie ist 34.", "In Lyon, seit drei Jahren."),
    ("Is the fox quick?", "Yes."),
    ("Столица Италии?", "Рим."),
]


@pytest.fixture(scope="module")
def records(tiny_model: ResolvedModel) -> list[dict[str, list[int]]]:
    tokenizer = load_tokenizer(tiny_model.path)
    examples = [
        Example(id=str(i), messages=({"role": "user", "content": q}, {"role": "assistant", "content": a}))
        for i, (q, a) in enumerate(CONVERSATIONS)
    ]
    built = [tokenize_example(example, tokenizer) for example in examples]
    assert len({len(record["input_ids"]) for record in built}) > 1, (
        "lengths must differ for padding to matter"
    )
    return built


def _model(tiny_model: ResolvedModel, attn_implementation: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        tiny_model.path, attn_implementation=attn_implementation
    ).eval()


def _per_sequence_logits(padded_logits: Any, packed_logits: Any, lengths: list[int]) -> float:
    """The largest difference between each sequence's logits alone (padded row) and in the packed row."""
    worst, start = 0.0, 0
    for row, length in enumerate(lengths):
        alone = padded_logits[row, :length]
        packed = packed_logits[0, start : start + length]
        worst = max(worst, float((alone - packed).abs().max()))
        start += length
    return worst


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_logits_and_loss_equal_the_padded_ones(
    tiny_model: ResolvedModel, records: list[dict[str, list[int]]], attn_implementation: str
) -> None:
    import torch

    model = _model(tiny_model, attn_implementation)
    pad_id = load_tokenizer(tiny_model.path).pad_token_id
    padded = TrainingCollator(pad_id)(records)
    packed = TrainingCollator(pad_id, pack=True, attn_implementation=attn_implementation)(records)
    lengths = [len(record["input_ids"]) for record in records]
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert batch_token_count(packed) == batch_token_count(padded) == sum(lengths)
    with torch.no_grad():
        # the model's defaults (KV cache on): the mask, not a rebuild from position ids, isolates them
        alone, together = model(**padded), model(**packed)
    assert _per_sequence_logits(alone.logits, together.logits, lengths) < 1e-5
    assert abs(float(alone.loss) - float(together.loss)) < 1e-5

    # the control: the same row with position ids but no mask lets later sequences attend to earlier ones
    unmasked = {key: packed[key] for key in ("input_ids", "position_ids")}
    with torch.no_grad():
        leaky = model(**unmasked).logits
    assert _per_sequence_logits(alone.logits, leaky, lengths) > 1e-3


def test_the_block_mask_lets_each_token_see_only_its_own_past() -> None:
    allowed = block_diagonal_causal_mask([2, 3], "sdpa")[0, 0]
    expected = [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert allowed.int().tolist() == expected
    additive = block_diagonal_causal_mask([2, 3], "eager")[0, 0]
    assert ((additive == 0) == allowed).all() and additive.min() < -1e30


def test_a_packed_row_restarts_positions_and_never_trains_across_a_boundary(
    records: list[dict[str, list[int]]],
) -> None:
    packed = TrainingCollator(0, pack=True, attn_implementation="flash_attention_2")(records[:2])
    first, second = (len(record["input_ids"]) for record in records[:2])
    assert packed["position_ids"][0].tolist() == [*range(first), *range(second)]
    # the second sequence's first token would be "predicted" from the first sequence's last one
    assert packed["labels"][0, first] == -100
    assert packed["cu_seq_lens_q"].tolist() == [0, first, first + second]
    assert packed["max_length_q"] == max(first, second)
    assert "attention_mask" not in packed, "FlashAttention's varlen path takes boundaries, not a mask"
