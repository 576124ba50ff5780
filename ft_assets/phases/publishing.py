"""What a published fine-tune carries so that it works elsewhere: a portable base id, its stop tokens, a merge.

- ``adapter_config.json`` names the base by its hub id or embedded name, not this machine's cache path (the
  local path stays in the project's metadata file beside it, where inference looks first);
- a merged model keeps every stop id of the base's generation config and adds the end-of-turn token;
- a QLoRA adapter says which base it was trained against: evaluation and merging use the unquantized one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_assets.phases.io import write_json
from ft_assets.phases.models import DeviceInfo, ResolvedModel

ADAPTER_CONFIG = "adapter_config.json"


def portable_base_name(base: ResolvedModel) -> str:
    """The base as another machine can name it: hub id or embedded name; a local base keeps its path."""
    return str(base.path) if base.source == "local" else base.model_id


def make_adapter_config_portable(adapter_dir: Path, base: ResolvedModel) -> None:
    """Point ``adapter_config.json``'s ``base_model_name_or_path`` at :func:`portable_base_name`."""
    file = adapter_dir / ADAPTER_CONFIG
    config = json.loads(file.read_text())
    config["base_model_name_or_path"] = portable_base_name(base)
    write_json(file, config)


def merged_eos_ids(base_eos: int | list[int] | None, end_of_turn_id: int) -> int | list[int]:
    """The base's stop ids (one or a list, e.g. Llama-3.1's three) plus the end-of-turn id, in that order."""
    ids = [] if base_eos is None else [base_eos] if isinstance(base_eos, int) else list(base_eos)
    if end_of_turn_id not in ids:
        ids.append(end_of_turn_id)
    return ids[0] if len(ids) == 1 else ids


def evaluation_base(quantization: str | None) -> str:
    """Which base the adapter is evaluated and merged on, in words for reports and MLflow."""
    if quantization is None:
        return "the base it was trained on"
    return f"the unquantized base (trained against its {quantization} quantization)"


def save_merged(
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
    config = merged.generation_config
    config.eos_token_id = merged_eos_ids(config.eos_token_id, tokenizer.eos_token_id)
    config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
