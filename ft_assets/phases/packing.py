"""Batches for training: padded rows, or padding-free packing that keeps every sequence isolated.

Packing concatenates a micro-batch's sequences into one row, so no compute goes to padding. Each
sequence must still see only itself, as it would alone in a padded batch:

- ``position_ids`` restart at 0 at every sequence (rotary embeddings see the positions they would alone);
- sdpa and eager attention get a block-diagonal causal mask of shape ``(1, 1, length, length)`` (bool for
  sdpa, additive float for eager, which adds the mask to its scores): with position ids alone they attend
  across sequence boundaries whenever transformers does not rebuild the mask from them (a model run with
  its KV cache on, as in the default ``use_cache=True``);
- FlashAttention gets no mask but the sequence boundaries (``cu_seq_lens``), its varlen kernel; flex
  attention builds its block mask from the restarted ``position_ids``.

The label of each sequence's first token is ``-100``: in the row it would be predicted from the previous
sequence's last token, and alone it is never predicted. So a packed batch trains the same tokens, with the
same loss, as the padded batch of the same sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ft_assets.phases.label_masks import IGNORE_INDEX

#: Attention implementations that take the block-diagonal mask; the others isolate by position ids.
MASKED_ATTENTION = ("sdpa", "eager")
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def block_diagonal_causal_mask(lengths: Sequence[int], attn_implementation: str) -> Any:
    """The ``(1, 1, L, L)`` mask letting each token attend to earlier tokens of its own sequence only."""
    import torch

    sequence_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths)))
    total = int(sequence_of.numel())
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    allowed = (causal & (sequence_of[:, None] == sequence_of[None, :]))[None, None]
    if attn_implementation == "sdpa":
        return allowed
    blocked = torch.zeros(allowed.shape, dtype=torch.float32)
    return blocked.masked_fill_(~allowed, torch.finfo(torch.float32).min)


@dataclass
class TrainingCollator:
    """Collates ``{"input_ids", "labels"}`` records into a padded batch, or one packed row (``pack``)."""

    pad_token_id: int
    pack: bool = False
    attn_implementation: str = "sdpa"

    def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self._packed(records) if self.pack else self._padded(records)

    def _padded(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(record["input_ids"]) for record in records)
        input_ids = torch.full((len(records), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(records), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(records), width), dtype=torch.long)
        for row, record in enumerate(records):
            length = len(record["input_ids"])
            input_ids[row, :length] = torch.tensor(record["input_ids"])
            labels[row, :length] = torch.tensor(record["labels"])
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    def _packed(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lengths = [len(record["input_ids"]) for record in records]
        input_ids = torch.tensor([token for record in records for token in record["input_ids"]])[None]
        labels = torch.tensor([label for record in records for label in record["labels"]])[None]
        position_ids = torch.cat([torch.arange(length) for length in lengths])[None]
        labels[position_ids == 0] = IGNORE_INDEX
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
        if self.attn_implementation in MASKED_ATTENTION:
            batch["attention_mask"] = block_diagonal_causal_mask(lengths, self.attn_implementation)
        elif self.attn_implementation in VARLEN_ATTENTION:
            starts = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = starts
            batch["max_length_q"] = batch["max_length_k"] = max(lengths)
        return batch


def batch_token_count(batch: dict[str, Any]) -> int:
    """Real (non-padding) tokens of a batch: a packed row holds no padding, a padded batch says by its mask."""
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return int(batch["input_ids"].numel())
    return int(mask.sum())
