"""What a finished training run measured: its summary metrics and the final validation loss."""

from __future__ import annotations

import math
from typing import Any


def final_validation_loss(trainer: Any) -> float:
    """The validation loss of the model training ended with, measured again only when no evaluation saw it.

    With ``load_best_model_at_end`` (early stopping) that model is the best checkpoint, whose loss is
    ``state.best_metric``; otherwise an evaluation logged at the last step saw the final weights.
    """
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_metric is not None:
        return float(state.best_metric)
    evaluations = [entry for entry in state.log_history if "eval_loss" in entry]
    if evaluations and evaluations[-1].get("step") == state.global_step:
        return float(evaluations[-1]["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


def final_metrics(trainer: Any, output: Any, duration: float, seen_tokens: int) -> dict[str, float]:
    """The run's summary metrics: last and mean train loss, steps, trained and seen tokens, throughput, parameters."""
    if hasattr(trainer.model, "get_nb_trainable_parameters"):
        # PEFT's count: a 4-bit weight stores two parameters per element, plain numel() halves them
        trainable, total = trainer.model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "train_loss": float(losses[-1]) if losses else float(output.training_loss),
        "train_loss_mean": float(output.training_loss),
        "steps": float(trainer.state.global_step),
        # label tokens the loss trained on; seen: every non-padding input token (prompts included)
        "trained_tokens": float(trainer.trained_tokens),
        "seen_tokens": float(seen_tokens),
        "tokens_per_s": seen_tokens / duration if duration > 0 else math.nan,
        "trainable_params": float(trainable),
        "total_params": float(total),
        "trainable_share": trainable / total if total else math.nan,
        "duration_s": duration,
    }
