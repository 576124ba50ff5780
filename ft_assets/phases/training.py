"""Supervised fine-tuning with TRL + PEFT: LoRA / rsLoRA / DoRA / QLoRA or full fine-tuning, resumable.

Framework-free: ``train()`` takes the resolved settings, base model and datasets and returns a
:class:`TrainingResult`. ``python -m ft_assets.phases.training --config FILE --output DIR`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_assets.config import FineTunerConfig, Settings, load_settings
from ft_assets.dataset_specs import TRAINING, VALIDATION
from ft_assets.phases.checkpoints import (
    CheckpointLock,
    checkpoint_root,
    checkpoint_step,
    last_checkpoint,
    prune_stale_checkpoints,
    training_fingerprint,
)
from ft_assets.phases.datasets import (
    BadRow,
    Example,
    LoadedDataset,
    check_bad_rows,
    load_configured,
    split_validation,
)
from ft_assets.phases.io import atomic_directory, write_json
from ft_assets.phases.label_loss import trainer_class
from ft_assets.phases.label_masks import tokenize_example
from ft_assets.phases.models import (
    MODEL_INFO_FILE,
    DeviceInfo,
    ModelError,
    ResolvedModel,
    configured_chat_template,
    detect_device,
    load_tokenizer,
    resolve_base_model,
)
from ft_assets.phases.packing import TrainingCollator
from ft_assets.phases.publishing import evaluation_base, make_adapter_config_portable, save_merged
from ft_assets.phases.system_prompt import SYSTEM_PROMPT_KEY, SystemPrompt
from ft_assets.phases.training_metrics import final_metrics, final_validation_loss
from ft_assets.phases.training_recipe import (
    base_quantization,
    load_model,
    peft_config,
    planned_steps,
    sft_config,
)
from ft_assets.secrets import hf_token, redact_value

logger = logging.getLogger(__name__)
LogCallback = Callable[[Mapping[str, float], int], None]
MERGED_SUBDIR = "merged"


@dataclass
class TrainingResult:
    """What a fine-tuning run produced."""

    output_dir: Path
    merged_dir: Path | None
    metrics: dict[str, float]
    log_history: list[dict[str, Any]]
    fingerprint: str
    device: DeviceInfo
    resumed_from_step: int | None = None
    dropped_rows: list[BadRow] = field(default_factory=list)
    hub_url: str | None = None
    #: The quantization the base was trained against (QLoRA), None for none; see :attr:`evaluation_base`.
    base_quantization: str | None = None

    @property
    def evaluation_base(self) -> str:
        """Which base the adapter is evaluated and merged on, in words."""
        return evaluation_base(self.base_quantization)


def _drop_overlong(
    examples: list[Example], tokenizer: Any, config: FineTunerConfig, source: str
) -> tuple[list[Example], list[BadRow]]:
    # SFTTrainer would silently truncate these rows (cutting off the answer and its EOS): report them instead.
    bad: list[BadRow] = []
    kept: list[Example] = []
    for example in examples:
        length = len(_tokenized(example, tokenizer, config)["input_ids"])
        if length > config.max_length:
            bad.append(
                BadRow(
                    example.row, f"{length} tokens after templating exceeds max_length={config.max_length}"
                )
            )
        else:
            kept.append(example)
    return kept, check_bad_rows(bad, policy=config.on_bad_rows, source=source, total=len(examples))


def _tokenized(example: Example, tokenizer: Any, config: FineTunerConfig) -> dict[str, list[int]]:
    return tokenize_example(
        example, tokenizer, responses_only=config.train_on_responses_only, turns=config.train_on_turns
    )


def _log_relay(on_log: LogCallback | None) -> Any:
    """A TrainerCallback that measures trained tokens/s and forwards trainer logs to ``on_log``."""
    from transformers import TrainerCallback

    class LogRelay(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.perf_counter()
            self.start_tokens = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # on resume the trainer has restored the checkpoint's token count by now: count only this run's
            self.started = time.perf_counter()
            self.start_tokens = state.num_input_tokens_seen or 0

        def tokens(self, state: Any) -> int:
            return (state.num_input_tokens_seen or 0) - self.start_tokens

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            numeric = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            elapsed = time.perf_counter() - self.started
            if "loss" in numeric and elapsed > 0:
                numeric["tokens_per_s"] = self.tokens(state) / elapsed
            if on_log is not None and numeric:
                on_log(numeric, state.global_step)

    return LogRelay()


def _save_loss_plot(log_history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if train:
        axis.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        axis.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def prepare_examples(
    settings: Settings, train_set: LoadedDataset, validation_set: LoadedDataset | None, tokenizer: Any
) -> tuple[list[Example], list[Example], list[BadRow]]:
    """Training and validation examples after the validation split and the ``max_length`` check."""
    config = settings.fine_tuner
    train_examples = list(train_set.examples)
    validation_examples = list(validation_set.examples) if validation_set else []
    if not validation_examples and config.validation_split > 0:
        train_examples, validation_examples = split_validation(
            train_examples, config.validation_split, config.seed
        )
    train_examples, dropped = _drop_overlong(train_examples, tokenizer, config, train_set.resolved)
    if validation_examples:
        source = validation_set.resolved if validation_set else train_set.resolved
        validation_examples, dropped_val = _drop_overlong(validation_examples, tokenizer, config, source)
        dropped += dropped_val
    if not train_examples:
        raise ModelError(f"no training rows left in {train_set.resolved} after dropping bad rows")
    return train_examples, validation_examples, dropped


def build_trainer(
    settings: Settings,
    base: ResolvedModel,
    tokenizer: Any,
    train_examples: list[Example],
    validation_examples: list[Example],
    *,
    checkpoint_dir: Path,
    device: DeviceInfo,
    callbacks: Sequence[Any] = (),
) -> Any:
    """An SFTTrainer for ``base`` over the examples, tokenized and labelled by :mod:`label_masks`.

    With ``train_on_responses_only`` the loss trains every assistant turn (``train_on_turns = "all"``) or
    the final one, each through its end-of-turn token (the EOS); ``packing`` concatenates each micro-batch
    into one isolated row (:mod:`packing`).
    """
    import torch
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback

    config = settings.fine_tuner
    torch.manual_seed(config.seed)
    model = load_model(base, config, device)
    train_dataset = Dataset.from_list([_tokenized(e, tokenizer, config) for e in train_examples])
    eval_dataset = (
        Dataset.from_list([_tokenized(e, tokenizer, config) for e in validation_examples])
        if validation_examples
        else None
    )
    all_callbacks = list(callbacks)
    if config.early_stopping_patience is not None and eval_dataset is not None:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    total_steps = planned_steps(config, len(train_examples), int(os.environ.get("WORLD_SIZE", "1")))
    trainer = trainer_class()(
        model=model,
        args=sft_config(config, device, checkpoint_dir, eval_dataset is not None, total_steps),
        data_collator=TrainingCollator(
            tokenizer.pad_token_id, pack=config.packing, attn_implementation=model.config._attn_implementation
        ),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(config),
        callbacks=all_callbacks,
    )
    # without tqdm the trainer prints every log dict to stdout; logs reach callers through callbacks instead
    trainer.remove_callback(PrinterCallback)
    return trainer


def train(
    settings: Settings,
    base: ResolvedModel,
    train_set: LoadedDataset,
    validation_set: LoadedDataset | None,
    *,
    output_dir: Path,
    checkpoint_root: Path,
    on_log: LogCallback | None = None,
    hub_token: str | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainingResult:
    """Fine-tune ``base`` and publish adapter (or full model) + tokenizer + metadata atomically at ``output_dir``.

    Checkpoints go to ``checkpoint_root/<fingerprint>``; an unchanged job resumes from the newest complete
    one, and they are removed once the output is published. ``callbacks`` are extra transformers
    ``TrainerCallback`` objects (benchmarks, orchestration hooks).
    """
    config = settings.fine_tuner
    device = detect_device(config.device)
    if config.push_to_hub and not hub_token:
        raise ModelError("[fine_tuner] push_to_hub = true needs a Hugging Face token (HF_TOKEN or --hf-key)")
    template = configured_chat_template(settings)
    tokenizer = load_tokenizer(base.path, chat_template=template)
    train_examples, validation_examples, dropped = prepare_examples(
        settings, train_set, validation_set, tokenizer
    )

    data_versions = {"train": train_set.content_hash}
    if validation_set is not None:
        data_versions["validation"] = validation_set.content_hash
    fingerprint = training_fingerprint(config, base, data_versions, template)
    checkpoint_dir = checkpoint_root / fingerprint
    # rank 0 alone: the other ranks of a job follow it (they would otherwise wait on their own rank 0)
    lock = (
        CheckpointLock(checkpoint_root, fingerprint, logger) if os.environ.get("RANK", "0") == "0" else None
    )
    retention_days = settings.pipeline.checkpoint_retention_days
    # under DDP every rank runs this; one of them prunes
    if retention_days is not None and os.environ.get("RANK", "0") == "0":
        for stale in prune_stale_checkpoints(checkpoint_root, keep=fingerprint, max_age_days=retention_days):
            logger.info(f"removed checkpoints untouched for {retention_days:g} days: {stale}")
    resume = last_checkpoint(checkpoint_dir)
    # read now: checkpoint rotation during training may delete this directory
    resumed_from_step = checkpoint_step(resume) if resume else None

    relay = _log_relay(on_log)
    trainer = build_trainer(
        settings,
        base,
        tokenizer,
        train_examples,
        validation_examples,
        checkpoint_dir=checkpoint_dir,
        device=device,
        callbacks=[relay, *callbacks],
    )
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = final_metrics(trainer, output, time.perf_counter() - started, relay.tokens(trainer.state))
    quantization = base_quantization(config)
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = final_validation_loss(trainer)
    log_history = list(trainer.state.log_history)
    info = {
        "base_model_id": base.model_id,
        "base_model_path": str(base.path),
        "base_model_hash": base.content_hash,
        "method": config.method,
        "data_versions": data_versions,
        "fingerprint": fingerprint,
        "config": redact_value(config.model_dump(mode="json")),  # values from ${VAR} are secrets
        "metrics": metrics,
        "device": device.__dict__,
        "chat_template_source": config.chat_template or "tokenizer",
        SYSTEM_PROMPT_KEY: SystemPrompt.of(config).to_json(),
        "eos_token": tokenizer.eos_token,
        "resumed_from_step": resumed_from_step,
        "dropped_rows": len(dropped),
        "base_quantization": quantization,
        "evaluation_base": evaluation_base(quantization),
    }
    merge = config.merge_adapter and config.method == "lora"
    hub_url = None
    # Under DDP/FSDP every rank trains, but only the main process publishes, cleans up and pushes.
    if trainer.is_world_process_zero():
        with atomic_directory(output_dir) as scratch:
            trainer.model.save_pretrained(scratch)
            if config.method == "lora":
                make_adapter_config_portable(scratch, base)
            tokenizer.save_pretrained(scratch)
            if merge:
                save_merged(base, scratch, scratch / MERGED_SUBDIR, tokenizer, device)
                info["merged_subdir"] = MERGED_SUBDIR
            write_json(scratch / MODEL_INFO_FILE, info)
            write_json(scratch / "log_history.json", log_history)
            _save_loss_plot(log_history, scratch / "loss_curve.png")
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        hub_url = _push_to_hub(output_dir, config, hub_token) if config.push_to_hub else None
    if lock is not None:
        lock.release()
    trainer.accelerator.wait_for_everyone()
    return TrainingResult(
        output_dir=output_dir,
        merged_dir=output_dir / MERGED_SUBDIR if merge else None,
        metrics=metrics,
        log_history=log_history,
        fingerprint=fingerprint,
        device=device,
        resumed_from_step=resumed_from_step,
        dropped_rows=dropped,
        hub_url=hub_url,
        base_quantization=quantization,
    )


def _push_to_hub(output_dir: Path, config: FineTunerConfig, token: str | None) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    assert config.hub_model_id is not None  # the config validator guarantees it
    repo = api.create_repo(config.hub_model_id, private=config.hub_private, exist_ok=True)
    api.upload_folder(repo_id=config.hub_model_id, folder_path=str(output_dir))
    return str(repo)


def load_training_data(
    settings: Settings, token: str | None = None
) -> tuple[LoadedDataset, LoadedDataset | None]:
    """The training set and the explicit validation set (if configured), both labelled."""
    train_set = load_configured(TRAINING, settings, token)
    has_validation = VALIDATION.source(settings) is not None
    return train_set, load_configured(VALIDATION, settings, token) if has_validation else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    token = hf_token()
    base = resolve_base_model(
        settings.fine_tuner.base_model_id,
        cache_dir=settings.model_cache_dir,
        base_dir=settings.base_dir,
        token=token,
    )
    train_set, validation_set = load_training_data(settings, token)
    result = train(
        settings,
        base,
        train_set,
        validation_set,
        output_dir=args.output.resolve(),
        checkpoint_root=checkpoint_root(settings),
        on_log=lambda logs, step: print(json.dumps({"step": step, **logs}), flush=True),
        hub_token=token,
    )
    summary = {
        "output_dir": str(result.output_dir),
        "resumed_from_step": result.resumed_from_step,
        "dropped_rows": len(result.dropped_rows),
        **result.metrics,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
