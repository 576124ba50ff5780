"""The training loss with the LM head run only where labels are.

With response-only loss most positions are prompt tokens, whose logits the loss never reads; the LM head
(vocabulary x hidden, the largest single matmul of a small model) would still run on all of them. The
model's own ``logits_to_keep`` takes a boolean ``(batch, length)`` mask and projects only those positions,
so the loss is the plain causal-LM cross entropy over the positions whose next token is labelled.

:func:`trainer_class` is TRL's SFTTrainer with that loss (TRL's own fused head where it is already
compact: :func:`trl_head_is_compact`), a count of trained tokens, and a count of seen tokens that
understands packed batches (whose attention mask is 4D).
"""

from __future__ import annotations

import functools
from typing import Any

from ft_assets.phases.label_masks import IGNORE_INDEX
from ft_assets.phases.packing import batch_token_count


def labelled_positions_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
) -> tuple[Any, Any, Any]:
    """Summed next-token cross entropy over labelled positions / ``num_items_in_batch`` (default: their count).

    Equal to the model's own loss (``model(**inputs).loss``), computed from logits at labelled positions only.
    Returns the loss, those logits ``(n, vocab)`` and their target ids ``(n,)``.
    """
    import torch
    from torch.nn import functional

    model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    targets = inputs["labels"][:, 1:]
    # position t predicts token t + 1: keep t where that token is labelled (the last position predicts nothing)
    keep = functional.pad(targets != IGNORE_INDEX, (0, 1), value=False)
    outputs = model(**model_inputs, use_cache=False, logits_to_keep=keep)
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])
    wanted = targets[targets != IGNORE_INDEX].to(logits.device)
    total = functional.cross_entropy(logits.float(), wanted, reduction="sum")
    count = wanted.numel() if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(count, device=total.device).clamp(min=1), logits, wanted


def trl_head_is_compact(device_type: str, batch: dict[str, Any]) -> bool:
    """Whether TRL's fused LM head already scores only labelled positions, so it is the one to use.

    On Triton devices (CUDA, XPU) it projects only those positions, in vocabulary chunks that never hold the
    whole ``(positions, vocabulary)`` logits; elsewhere it scores every position. Its token metric reads a
    2D attention mask, so packed batches (4D mask) take :func:`labelled_positions_loss` on every device.
    """
    from transformers.utils import is_triton_available

    mask = batch.get("attention_mask")
    padded = mask is not None and mask.ndim == 2
    return padded and device_type in ("cuda", "xpu") and is_triton_available()


@functools.cache
def trainer_class() -> type:
    """SFTTrainer computing the loss only at labelled positions and counting trained (labelled) tokens."""
    from trl import SFTTrainer

    class LabelledPositionsTrainer(SFTTrainer):
        trained_tokens = 0

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            import torch

            mode = "train" if model.training else "eval"
            if mode == "train":
                labelled = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
                if self.accelerator.num_processes > 1:
                    labelled = self.accelerator.gather(labelled[None]).sum()
                self.trained_tokens += int(labelled)
            if trl_head_is_compact(inputs["input_ids"].device.type, inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, logits, wanted = labelled_positions_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # like Trainer.compute_loss: the count spans every rank, and DDP averages the gradients
                loss = loss * self.accelerator.num_processes
            with torch.no_grad():
                correct = (logits.argmax(-1) == wanted).sum().item()
            self._metrics[mode]["mean_token_accuracy"].append(correct / max(1, wanted.numel()))
            if return_outputs:
                with torch.no_grad():
                    full = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
                return loss, full
            return loss

        def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
            # the parent sums `attention_mask`, which for a packed batch is the 4D block mask
            if self.args.include_num_input_tokens_seen != "non_padding":
                super()._track_num_input_tokens(inputs)
                return
            import torch

            seen = torch.as_tensor(batch_token_count(inputs), device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += self.accelerator.gather(seen).sum().item()

    return LabelledPositionsTrainer
