"""The training recipe: how the model is loaded (precision, quantization, adapters) and the trainer's arguments.

Pure decisions (:func:`precision_plan`, :func:`evaluation_steps`, :func:`recipe_warnings`) are separate from
the functions that build transformers/TRL/PEFT objects from them, so they can be checked without a GPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_assets.config import FineTunerConfig
from ft_assets.phases.models import DeviceInfo, ResolvedModel

#: A full fine-tune at this rate or above is LoRA-sized: most runs diverge or forget.
LORA_SIZED_LEARNING_RATE = 1e-4
#: Evaluations during a run with validation data and no ``eval_steps``.
DEFAULT_EVALUATIONS = 5


@dataclass(frozen=True)
class PrecisionPlan:
    """The dtype the weights are loaded in, and the Trainer's mixed-precision (autocast) flags."""

    load_dtype: str
    bf16: bool
    fp16: bool


def precision_plan(device: DeviceInfo, method: str) -> PrecisionPlan:
    """Full fine-tuning keeps fp32 master weights under bf16/fp16 autocast; LoRA/QLoRA a half-precision base.

    Pure bf16 AdamW at full fine-tuning rates (~2e-5) rounds most updates away, and fp16 gradients of fp16
    weights cannot be unscaled (``Attempting to unscale FP16 gradients``); fp32 weights with autocast avoid
    both. A LoRA base is frozen, so it may stay in half precision (or 4/8 bits): PEFT keeps the adapter
    weights in fp32. ``device.dtype`` is the GPU's half type (bf16 where supported, else fp16); the CPU
    trains in fp32 without autocast.
    """
    if device.device != "cuda" or device.dtype == "float32":
        return PrecisionPlan("float32", bf16=False, fp16=False)
    half = device.dtype
    load = "float32" if method == "full" else half
    return PrecisionPlan(load, bf16=half == "bfloat16", fp16=half == "float16")


def planned_steps(config: FineTunerConfig, examples: int, processes: int = 1) -> int:
    """Optimizer steps the run will take: ``max_steps``, else the epochs over ``examples``."""
    if config.max_steps > 0:
        return config.max_steps
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * processes
    return max(1, math.ceil(math.ceil(examples / per_step) * config.epochs))


def evaluation_steps(config: FineTunerConfig, total_steps: int) -> int:
    """``eval_steps``, else a cadence giving :data:`DEFAULT_EVALUATIONS` evaluations over the run."""
    return config.eval_steps or max(1, total_steps // DEFAULT_EVALUATIONS)


def recipe_warnings(config: FineTunerConfig) -> list[str]:
    """Settings that train, but probably badly (preflight shows them)."""
    warnings = []
    if config.method == "full" and config.learning_rate >= LORA_SIZED_LEARNING_RATE:
        warnings.append(
            f"[fine_tuner] learning_rate = {config.learning_rate:g} with method = 'full': a LoRA-sized rate "
            "for a full fine-tune usually diverges or erases what the model knew; "
            "full fine-tuning uses ~1e-5 to 5e-5 (the default when learning_rate is unset: 2e-5)"
        )
    return warnings


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


def base_quantization(config: FineTunerConfig) -> str | None:
    """How the base was quantized for training ("nf4-4bit", "int8"), None when it was not."""
    if config.load_in_4bit:
        return "nf4-4bit"
    return "int8" if config.load_in_8bit else None


def load_model(base: ResolvedModel, config: FineTunerConfig, device: DeviceInfo) -> Any:
    """The base model as training needs it: in the planned dtype, quantized for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    quantization = _quantization_config(config, device)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, precision_plan(device, config.method).load_dtype)}
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


def peft_config(config: FineTunerConfig) -> Any:
    """The LoRA configuration (None for a full fine-tune)."""
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


def sft_config(
    config: FineTunerConfig, device: DeviceInfo, checkpoint_dir: Path, has_validation: bool, total_steps: int
) -> Any:
    """TRL's SFTConfig for the run: the data arrives tokenized and labelled, so no TRL packing or masking."""
    from trl import SFTConfig

    early_stopping = has_validation and config.early_stopping_patience is not None
    eval_steps = evaluation_steps(config, total_steps)
    # best-model tracking (early stopping) needs every save to coincide with an evaluation
    save_steps = eval_steps if early_stopping else config.save_steps
    precision = precision_plan(device, config.method)
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
        eval_strategy="steps" if has_validation else "no",
        eval_steps=eval_steps if has_validation else None,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=device.device == "cpu",
        # the new name: TRL's default for the deprecated `gradient_checkpointing` alias is True
        activation_checkpointing=config.gradient_checkpointing,
        # a packed micro-batch holds no padding: grouping by length would only correlate the batches
        train_sampling_strategy="group_by_length"
        if config.group_by_length and not config.packing
        else "random",
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataset_num_proc=None,
    )
