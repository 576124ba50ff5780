"""The training recipe's decisions: precision per device and method, method defaults, warnings, eval cadence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ft_assets.config import FineTunerConfig, Settings, build_settings, load_settings
from ft_assets.phases.models import DeviceInfo, ResolvedModel
from ft_assets.phases.publishing import evaluation_base, merged_eos_ids
from ft_assets.phases.training_recipe import (
    PrecisionPlan,
    evaluation_steps,
    planned_steps,
    precision_plan,
    recipe_warnings,
)

CPU = DeviceInfo("cpu", "float32", "cpu")
BF16_GPU = DeviceInfo("cuda", "bfloat16", "H100")
FP16_GPU = DeviceInfo("cuda", "float16", "T4")


@pytest.mark.parametrize(
    ("device", "method", "plan"),
    [
        (CPU, "full", PrecisionPlan("float32", bf16=False, fp16=False)),
        (CPU, "lora", PrecisionPlan("float32", bf16=False, fp16=False)),
        # full: fp32 master weights, half-precision autocast
        (BF16_GPU, "full", PrecisionPlan("float32", bf16=True, fp16=False)),
        (FP16_GPU, "full", PrecisionPlan("float32", bf16=False, fp16=True)),
        # LoRA / QLoRA: a frozen half-precision base (PEFT keeps the adapters in fp32)
        (BF16_GPU, "lora", PrecisionPlan("bfloat16", bf16=True, fp16=False)),
        (FP16_GPU, "lora", PrecisionPlan("float16", bf16=False, fp16=True)),
    ],
)
def test_precision_follows_device_and_method(device: DeviceInfo, method: str, plan: PrecisionPlan) -> None:
    assert precision_plan(device, method) == plan


def _fp16_step(tiny_model: ResolvedModel, weights_dtype: Any) -> None:
    """One fp16-autocast step with a GradScaler, as the Trainer takes it with ``fp16=True``."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=weights_dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    scaler = torch.amp.GradScaler("cpu")
    ids = torch.tensor([[1, 5, 9, 12, 2]])
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    scaler.step(optimizer)


def test_the_full_fine_tune_plan_trains_under_fp16_where_fp16_weights_cannot(
    tiny_model: ResolvedModel,
) -> None:
    import torch

    _fp16_step(tiny_model, getattr(torch, precision_plan(FP16_GPU, "full").load_dtype))
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        _fp16_step(tiny_model, torch.float16)


def test_full_fine_tunes_default_to_a_small_rate_with_warmup_and_explicit_values_win() -> None:
    lora, full = FineTunerConfig(), FineTunerConfig(method="full")
    assert (lora.learning_rate, lora.warmup_ratio) == (1e-3, 0.0)
    assert (full.learning_rate, full.warmup_ratio) == (2e-5, 0.03)
    explicit = FineTunerConfig(method="full", learning_rate=5e-5, warmup_ratio=0.0)
    assert (explicit.learning_rate, explicit.warmup_ratio) == (5e-5, 0.0)
    # the resolved values survive the settings' JSON round trip (phase requests travel that way)
    again = FineTunerConfig.model_validate(full.model_dump(mode="json"))
    assert (again.learning_rate, again.warmup_ratio) == (2e-5, 0.03)


def test_a_toml_full_fine_tune_gets_the_method_defaults(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    settings = load_settings(write_config({"fine_tuner": {"method": "full"}}))
    assert settings.fine_tuner.learning_rate == 2e-5
    pinned = load_settings(write_config({"fine_tuner": {"method": "full", "learning_rate": 1e-3}}, "b.toml"))
    assert pinned.fine_tuner.learning_rate == 1e-3
    assert any("LoRA-sized rate" in item for item in recipe_warnings(pinned.fine_tuner))


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({"method": "full", "learning_rate": 1e-4}, True),
        ({"method": "full", "learning_rate": 9e-5}, False),
        ({"method": "full"}, False),
        ({"method": "lora", "learning_rate": 1e-3}, False),
    ],
)
def test_a_lora_sized_rate_for_a_full_fine_tune_is_warned(overrides: dict[str, Any], warned: bool) -> None:
    warnings = recipe_warnings(FineTunerConfig(**overrides))
    assert bool(warnings) is warned
    if warned:
        assert "learning_rate = 0.0001 with method = 'full'" in warnings[0]


def test_preflight_reports_the_rate_warning(write_config: Callable[..., Path]) -> None:
    from ft_assets.preflight import preflight

    settings = load_settings(write_config({"fine_tuner": {"method": "full", "learning_rate": 1e-3}}))
    report = preflight(settings, phases=["finetuning"])
    assert any("LoRA-sized rate for a full fine-tune" in item for item in report.warnings)
    quiet = preflight(_with(settings, learning_rate=2e-5), phases=["finetuning"])
    assert not any("learning_rate" in item for item in quiet.warnings)


def _with(settings: Settings, **fine_tuner: Any) -> Settings:
    data = settings.model_dump(mode="json")
    data["fine_tuner"].update(fine_tuner)
    return build_settings(data, base_dir=settings.base_dir)


@pytest.mark.parametrize(
    ("overrides", "examples", "steps", "every"),
    [
        ({"max_steps": 40}, 1000, 40, 8),
        ({"max_steps": 3}, 1000, 3, 1),
        ({"max_steps": 40, "eval_steps": 7}, 1000, 40, 7),
        # 100 examples, batch 8 x accumulation 2 -> 7 steps an epoch, 3 epochs
        ({"epochs": 3.0, "gradient_accumulation_steps": 2}, 100, 21, 4),
    ],
)
def test_validation_runs_at_a_default_cadence(
    overrides: dict[str, Any], examples: int, steps: int, every: int
) -> None:
    config = FineTunerConfig(per_device_train_batch_size=8, **overrides)
    assert planned_steps(config, examples) == steps
    assert evaluation_steps(config, steps) == every


def test_merged_stop_ids_keep_the_base_list_and_add_the_end_of_turn() -> None:
    assert merged_eos_ids([2, 0], 2) == [2, 0]
    assert merged_eos_ids([128001, 128008, 128009], 128009) == [128001, 128008, 128009]
    assert merged_eos_ids([2, 0], 7) == [2, 0, 7]
    assert merged_eos_ids(2, 7) == [2, 7]
    assert merged_eos_ids(7, 7) == 7
    assert merged_eos_ids(None, 7) == 7


def test_a_qlora_adapter_says_it_is_evaluated_on_the_unquantized_base() -> None:
    assert "unquantized" in evaluation_base("nf4-4bit") and "nf4-4bit" in evaluation_base("nf4-4bit")
    assert evaluation_base(None) == "the base it was trained on"
