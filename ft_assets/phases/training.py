"""Supervised fine-tuning with TRL + PEFT: LoRA / rsLoRA / DoRA / QLoRA or full fine-tuning, resumable.

Framework-free: ``train()`` takes the resolved settings, base model and datasets and returns a
:class:`TrainingResult`. ``python -m ft_assets.phases.training --config FILE --output DIR`` runs it alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
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
    detect_device,
    load_chat_template,
    load_tokenizer,
    resolve_base_model,
)

LogCallback = Callable[[Mapping[str, float], int], None]
#: Config keys that do not change what is trained, so a change of them keeps resumable checkpoints.
_NON_TRAINING_KEYS = {"logging_steps", "save_steps", "save_total_limit", "push_to_hub", "hub_model_id",
                      "hub_private", "merge_adapter", "on_bad_rows", "device"}


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


def training_fingerprint(config: FineTunerConfig, base: ResolvedModel, data_versions: Mapping[str, str]) -> str:
    """Identity of a training job: same fingerprint -> its checkpoints can be resumed."""
    relevant = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NON_TRAINING_KEYS}
    payload = json.dumps({"config": relevant, "base": base.content_hash, "data": dict(data_versions)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` (trainer_state.json is written last)."""
    candidates = [
        p for p in checkpoint_dir.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(candidates, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _drop_overlong(
    examples: list[Example], tokenizer: Any, max_length: int, policy: str, source: str
) -> tuple[list[Example], list[BadRow]]:
    bad: list[BadRow] = []
    kept: list[Example] = []
    for example in examples:
        if example.text is not None:
            length = len(tokenizer(example.text)["input_ids"])
        else:
            length = len(tokenizer.apply_chat_template(list(example.messages), tokenize=True, return_dict=True)["input_ids"])
        if length > max_length:
            bad.append(BadRow(example.row, f"{length} tokens after templating exceeds max_length={max_length}"))
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
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": 0} if device.device == "cuda" else {"": "cpu"}
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


def _sft_config(config: FineTunerConfig, device: DeviceInfo, checkpoint_dir: Path, has_validation: bool) -> Any:
    from trl import SFTConfig

    evaluate = has_validation and (config.eval_steps is not None or config.early_stopping_patience is not None)
    eval_steps = config.eval_steps or config.save_steps
    save_steps = config.save_steps
    if config.early_stopping_patience is not None:
        # best-model tracking needs every save to coincide with an evaluation
        save_steps = eval_steps
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
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
        load_best_model_at_end=config.early_stopping_patience is not None and evaluate,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=device.dtype == "bfloat16",
        fp16=device.dtype == "float16",
        use_cpu=device.device == "cpu",
        gradient_checkpointing=config.gradient_checkpointing,
        packing=config.packing,
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing else "random",
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


class _LogRelay:
    """Forwards trainer logs (loss, learning rate, grad norm, tokens/s) to a callback."""

    def __init__(self, on_log: LogCallback | None) -> None:
        from transformers import TrainerCallback

        relay = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                relay.started = time.perf_counter()
                relay.start_tokens = state.num_input_tokens_seen or 0

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                numeric = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
                elapsed = time.perf_counter() - relay.started
                seen = (state.num_input_tokens_seen or 0) - relay.start_tokens
                if elapsed > 0 and seen:
                    numeric["tokens_per_s"] = seen / elapsed
                if on_log is not None and numeric:
                    on_log(numeric, state.global_step)

        self.started = time.perf_counter()
        self.start_tokens = 0
        self.callback = Callback()


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
        train_examples, validation_examples = split_validation(train_examples, config.validation_split, config.seed)
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
) -> TrainingResult:
    """Fine-tune ``base`` and publish adapter (or full model) + tokenizer + metadata atomically at ``output_dir``.

    Checkpoints go to ``checkpoint_root/<fingerprint>``; an unchanged job resumes from the newest one.
    """
    import torch
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    config = settings.fine_tuner
    device = detect_device(config.device)
    _check_packing(config, device)
    if config.push_to_hub and not hub_token:
        raise ModelError("[fine_tuner] push_to_hub = true needs a Hugging Face token (HF_TOKEN or --hf-key)")
    template = load_chat_template(config.chat_template, settings.base_dir)
    tokenizer = load_tokenizer(base.path, chat_template=template)
    train_examples, validation_examples, dropped = prepare_examples(settings, train_set, validation_set, tokenizer)

    data_versions = {"train": train_set.content_hash}
    if validation_set is not None:
        data_versions["validation"] = validation_set.content_hash
    fingerprint = training_fingerprint(config, base, data_versions)
    checkpoint_dir = checkpoint_root / fingerprint
    resume = last_checkpoint(checkpoint_dir)

    torch.manual_seed(config.seed)
    model = _load_model(base, config, device)
    train_dataset = Dataset.from_list(to_trl_records(train_examples))
    eval_dataset = Dataset.from_list(to_trl_records(validation_examples)) if validation_examples else None
    relay = _LogRelay(on_log)
    callbacks = [relay.callback]
    if config.early_stopping_patience is not None and eval_dataset is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(config, device, checkpoint_dir, eval_dataset is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=_peft_config(config),
        callbacks=callbacks,
    )
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    duration = time.perf_counter() - started

    metrics = _final_metrics(trainer, output, duration, relay, device)
    if eval_dataset is not None:
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
        "eos_token": tokenizer.eos_token,
    }
    merged_dir = None
    with atomic_directory(output_dir) as scratch:
        trainer.model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        if config.merge_adapter and config.method == "lora":
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(scratch / "merged")
            tokenizer.save_pretrained(scratch / "merged")
            info["merged_subdir"] = "merged"
        write_json(scratch / MODEL_INFO_FILE, info)
        write_json(scratch / "log_history.json", log_history)
        _save_loss_plot(log_history, scratch / "loss_curve.png")
    if info.get("merged_subdir"):
        merged_dir = output_dir / "merged"
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    hub_url = _push_to_hub(output_dir, config, hub_token) if config.push_to_hub else None
    return TrainingResult(
        output_dir=output_dir,
        merged_dir=merged_dir,
        metrics=metrics,
        log_history=log_history,
        fingerprint=fingerprint,
        device=device,
        resumed_from_step=int(resume.name.split("-")[-1]) if resume else None,
        dropped_rows=dropped,
        hub_url=hub_url,
    )


def _final_metrics(trainer: Any, output: Any, duration: float, relay: _LogRelay, device: DeviceInfo) -> dict[str, float]:
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    tokens = float((trainer.state.num_input_tokens_seen or 0) - relay.start_tokens)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "train_loss": float(losses[-1]) if losses else float(output.training_loss),
        "train_loss_mean": float(output.training_loss),
        "steps": float(trainer.state.global_step),
        "trained_tokens": tokens,
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


def load_training_data(settings: Settings, token: str | None = None) -> tuple[LoadedDataset, LoadedDataset | None]:
    """The training set and the explicit validation set (if configured), both labelled."""
    config = settings.fine_tuner
    train_set = load_dataset(
        config.training_data_id, config, base_dir=settings.base_dir, split=config.dataset_split,
        revision=config.dataset_revision, token=token, require_ground_truth=True,
    )
    validation_set = None
    if config.validation_data_id:
        validation_set = load_dataset(
            config.validation_data_id, config, base_dir=settings.base_dir, split="validation",
            revision=config.dataset_revision, token=token, require_ground_truth=True,
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
        settings.fine_tuner.base_model_id, cache_dir=settings.artifacts_root / "base_model",
        base_dir=settings.base_dir, token=token,
    )
    train_set, validation_set = load_training_data(settings, token)
    result = train(
        settings, base, train_set, validation_set,
        output_dir=args.output.resolve(),
        checkpoint_root=settings.artifacts_root / "fine_tuned_model" / "checkpoints",
        on_log=lambda logs, step: print(json.dumps({"step": step, **logs}), flush=True),
        hub_token=token,
    )
    print(json.dumps({"output_dir": str(result.output_dir), **result.metrics}, indent=2))


if __name__ == "__main__":
    main()
