"""Supervised fine-tuning with TRL + PEFT: LoRA / rsLoRA / DoRA / QLoRA or full fine-tuning, resumable.

Framework-free: ``train()`` takes the resolved settings, base model and datasets and returns a
:class:`TrainingResult`. ``python -m ft_assets.phases.training --config FILE --output DIR`` runs it alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_assets.config import FineTunerConfig, Settings, load_settings
from ft_assets.phases.datasets import (
    BadRow,
    Example,
    LoadedDataset,
    check_bad_rows,
    load_dataset,
    split_validation,
    to_trl_records,
)
from ft_assets.phases.io import atomic_directory, write_json
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
from ft_assets.phases.system_prompt import SYSTEM_PROMPT_KEY, SystemPrompt

logger = logging.getLogger(__name__)
LogCallback = Callable[[Mapping[str, float], int], None]
#: Config keys that do not change what is trained, so a change of them keeps resumable checkpoints.
_NON_TRAINING_KEYS = {
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "push_to_hub",
    "hub_model_id",
    "hub_private",
    "merge_adapter",
    "on_bad_rows",
    "device",
}
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


def training_fingerprint(
    config: FineTunerConfig, base: ResolvedModel, data_versions: Mapping[str, str]
) -> str:
    """Identity of a training job: same fingerprint -> its checkpoints can be resumed."""
    relevant = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NON_TRAINING_KEYS}
    payload = json.dumps(
        {"config": relevant, "base": base.content_hash, "data": dict(data_versions)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint directory, None for a partial one.

    The trainer writes ``trainer_state.json`` last, and a crash can cut that write short, so the state
    must parse and name the directory's own step.
    """
    suffix = path.name.removeprefix("checkpoint-")
    if not suffix.isdigit():
        return None
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return int(suffix) if state.get("global_step") == int(suffix) else None


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` under ``checkpoint_dir`` (None when there is none)."""
    steps = {path: _checkpoint_step(path) for path in checkpoint_dir.glob("checkpoint-*")}
    complete = {path: step for path, step in steps.items() if step is not None}
    return max(complete, key=complete.__getitem__, default=None)


def _newest_change(folder: Path) -> float:
    """The newest modification time of ``folder`` and of anything in it."""
    times = [folder.stat().st_mtime]
    for parent, _, files in os.walk(folder):
        times.append(Path(parent).stat().st_mtime)
        times.extend((Path(parent) / name).stat().st_mtime for name in files)
    return max(times)


def prune_stale_checkpoints(
    checkpoint_root: Path, *, keep: str, max_age_days: float, now: float | None = None
) -> list[Path]:
    """Remove the checkpoint folders of other training jobs (fingerprints) untouched for ``max_age_days``.

    A job's checkpoints are removed when it publishes; these are left by runs that failed or were killed
    and never resumed because their config or data changed since. A job still training writes a checkpoint
    every ``save_steps``, so its folder is never that old. Returns the removed folders.
    """
    if not checkpoint_root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_age_days * 86400
    removed = []
    for folder in sorted(checkpoint_root.iterdir()):
        if folder.name == keep or not folder.is_dir():
            continue
        try:
            stale = _newest_change(folder) < cutoff
        except FileNotFoundError:  # removed meanwhile, by its own job publishing
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _token_count(example: Example, tokenizer: Any) -> int:
    """Tokens of ``example`` as SFTTrainer will see it (chat template applied, EOS appended to plain text)."""
    if example.text is None:
        return len(
            tokenizer.apply_chat_template(list(example.messages), tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
    text = example.text if example.text.endswith(tokenizer.eos_token) else example.text + tokenizer.eos_token
    return len(tokenizer(text)["input_ids"])


def _drop_overlong(
    examples: list[Example], tokenizer: Any, max_length: int, policy: str, source: str
) -> tuple[list[Example], list[BadRow]]:
    # SFTTrainer would silently truncate these rows (cutting off the answer and its EOS): report them instead.
    bad: list[BadRow] = []
    kept: list[Example] = []
    for example in examples:
        length = _token_count(example, tokenizer)
        if length > max_length:
            bad.append(
                BadRow(example.row, f"{length} tokens after templating exceeds max_length={max_length}")
            )
        else:
            kept.append(example)
    return kept, check_bad_rows(bad, policy=policy, source=source, total=len(examples))


def _quantization_config(config: FineTunerConfig, device: DeviceInfo) -> Any:
    if not (config.load_in_4bit or config.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    if config.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=device.torch_dtype(),
    )


def _load_model(base: ResolvedModel, config: FineTunerConfig, device: DeviceInfo) -> Any:
    from transformers import AutoModelForCausalLM

    quantization = _quantization_config(config, device)
    kwargs: dict[str, Any] = {"dtype": device.torch_dtype()}
    if quantization is not None:  # the config refuses quantization with method = 'full'
        kwargs["quantization_config"] = quantization
        # bitsandbytes quantizes while loading, on the device the weights are placed on
        # each DDP rank quantizes onto its own GPU
        kwargs["device_map"] = (
            {"": int(os.environ.get("LOCAL_RANK", 0))} if device.device == "cuda" else {"": "cpu"}
        )
    model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    return model


def _peft_config(config: FineTunerConfig) -> Any:
    if config.method == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias=config.bias,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        task_type="CAUSAL_LM",
    )


def _sft_config(
    config: FineTunerConfig, device: DeviceInfo, checkpoint_dir: Path, has_validation: bool
) -> Any:
    from trl import SFTConfig

    early_stopping = has_validation and config.early_stopping_patience is not None
    evaluate = has_validation and (config.eval_steps is not None or early_stopping)
    eval_steps = config.eval_steps or config.save_steps
    # best-model tracking (early stopping) needs every save to coincide with an evaluation
    save_steps = eval_steps if early_stopping else config.save_steps
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        # transformers 5 reads a warmup_steps value below 1 as a fraction of the total steps
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        optim=config.optim,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_length,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_steps if evaluate else None,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=device.dtype == "bfloat16",
        fp16=device.dtype == "float16",
        use_cpu=device.device == "cpu",
        # the new name: TRL's default for the deprecated `gradient_checkpointing` alias is True
        activation_checkpointing=config.gradient_checkpointing,
        packing=config.packing,
        train_sampling_strategy="group_by_length"
        if config.group_by_length and not config.packing
        else "random",
        completion_only_loss=config.train_on_responses_only,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataset_num_proc=None,
    )


def _check_packing(config: FineTunerConfig, device: DeviceInfo) -> None:
    if not config.packing:
        return
    import importlib.util

    # sdpa/eager attention attends across packed sequence boundaries: packing is only correct with FlashAttention
    if device.device != "cuda" or importlib.util.find_spec("flash_attn") is None:
        raise ModelError(
            "[fine_tuner] packing = true needs FlashAttention on CUDA; with sdpa/eager attention packed "
            "sequences attend to each other. Set packing = false."
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
    train_examples, dropped = _drop_overlong(
        train_examples, tokenizer, config.max_length, config.on_bad_rows, train_set.resolved
    )
    if validation_examples:
        source = validation_set.resolved if validation_set else train_set.resolved
        validation_examples, dropped_val = _drop_overlong(
            validation_examples, tokenizer, config.max_length, config.on_bad_rows, source
        )
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
    """An SFTTrainer for ``base`` over the examples (tokenized and labelled, not yet trained).

    Labels are -100 on prompt tokens when ``train_on_responses_only`` (TRL's completion-only loss on
    prompt/completion records); the completion includes the template's end-of-turn token (the EOS).
    """
    import torch
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTTrainer

    config = settings.fine_tuner
    torch.manual_seed(config.seed)
    model = _load_model(base, config, device)
    train_dataset = Dataset.from_list(to_trl_records(train_examples))
    eval_dataset = Dataset.from_list(to_trl_records(validation_examples)) if validation_examples else None
    all_callbacks = list(callbacks)
    if config.early_stopping_patience is not None and eval_dataset is not None:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(config, device, checkpoint_dir, eval_dataset is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=_peft_config(config),
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
    _check_packing(config, device)
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
    fingerprint = training_fingerprint(config, base, data_versions)
    checkpoint_dir = checkpoint_root / fingerprint
    retention_days = settings.pipeline.checkpoint_retention_days
    # under DDP every rank runs this; one of them prunes
    if retention_days is not None and os.environ.get("RANK", "0") == "0":
        for stale in prune_stale_checkpoints(checkpoint_root, keep=fingerprint, max_age_days=retention_days):
            logger.info(f"removed checkpoints untouched for {retention_days:g} days: {stale}")
    resume = last_checkpoint(checkpoint_dir)
    # read now: checkpoint rotation during training may delete this directory
    resumed_from_step = _checkpoint_step(resume) if resume else None

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
    metrics = _final_metrics(trainer, output, time.perf_counter() - started, relay.tokens(trainer.state))
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    log_history = list(trainer.state.log_history)
    info = {
        "base_model_id": base.model_id,
        "base_model_path": str(base.path),
        "base_model_hash": base.content_hash,
        "method": config.method,
        "data_versions": data_versions,
        "fingerprint": fingerprint,
        "config": config.model_dump(mode="json"),
        "metrics": metrics,
        "device": device.__dict__,
        "chat_template_source": config.chat_template or "tokenizer",
        SYSTEM_PROMPT_KEY: SystemPrompt.of(config).to_json(),
        "eos_token": tokenizer.eos_token,
        "resumed_from_step": resumed_from_step,
        "dropped_rows": len(dropped),
    }
    merge = config.merge_adapter and config.method == "lora"
    hub_url = None
    # Under DDP/FSDP every rank trains, but only the main process publishes, cleans up and pushes.
    if trainer.is_world_process_zero():
        with atomic_directory(output_dir) as scratch:
            trainer.model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            if merge:
                _save_merged(base, scratch, scratch / MERGED_SUBDIR, tokenizer, device)
                info["merged_subdir"] = MERGED_SUBDIR
            write_json(scratch / MODEL_INFO_FILE, info)
            write_json(scratch / "log_history.json", log_history)
            _save_loss_plot(log_history, scratch / "loss_curve.png")
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        hub_url = _push_to_hub(output_dir, config, hub_token) if config.push_to_hub else None
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
    )


def _save_merged(
    base: ResolvedModel, adapter_dir: Path, target: Path, tokenizer: Any, device: DeviceInfo
) -> None:
    """Base + adapter folded into one standalone model directory.

    The adapter is applied to a fresh, unquantized copy of the base: merging into 4/8-bit weights
    (QLoRA) would round the update away and save a bitsandbytes model.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=device.torch_dtype())
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _final_metrics(trainer: Any, output: Any, duration: float, tokens: int) -> dict[str, float]:
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
        "trained_tokens": float(tokens),
        "tokens_per_s": tokens / duration if duration > 0 else math.nan,
        "trainable_params": float(trainable),
        "total_params": float(total),
        "trainable_share": trainable / total if total else math.nan,
        "duration_s": duration,
    }


def _push_to_hub(output_dir: Path, config: FineTunerConfig, token: str | None) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    assert config.hub_model_id is not None  # the config validator guarantees it
    repo = api.create_repo(config.hub_model_id, private=config.hub_private, exist_ok=True)
    api.upload_folder(repo_id=config.hub_model_id, folder_path=str(output_dir))
    return str(repo)


def checkpoint_root(settings: Settings) -> Path:
    """Where training keeps its checkpoints, one folder per training fingerprint."""
    return settings.artifacts_root / "fine_tuned_model" / "checkpoints"


def load_training_data(
    settings: Settings, token: str | None = None
) -> tuple[LoadedDataset, LoadedDataset | None]:
    """The training set and the explicit validation set (if configured), both labelled."""
    config = settings.fine_tuner
    train_set = load_dataset(
        config.training_data_id,
        config,
        base_dir=settings.base_dir,
        split=config.dataset_split,
        revision=config.dataset_revision,
        token=token,
        require_ground_truth=True,
    )
    validation_set = None
    if config.validation_data_id:
        validation_set = load_dataset(
            config.validation_data_id,
            config,
            base_dir=settings.base_dir,
            split=config.validation_dataset_split,
            revision=config.dataset_revision,
            token=token,
            require_ground_truth=True,
        )
    return train_set, validation_set


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    token = os.environ.get("HF_TOKEN")
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
