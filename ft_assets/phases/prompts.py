"""What both inference backends (HF generate and vLLM) share: a trained model's stored metadata and the
base it was trained on, its tokenizer, the prompt encoding, the stop token ids and the output row schema.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ft_assets.phases.datasets import Example
from ft_assets.phases.models import (
    MODEL_INFO_FILE,
    ChatTemplate,
    ModelError,
    load_tokenizer,
    model_content_hash,
)


def read_model_info(model_dir: Path) -> dict[str, Any]:
    """The metadata the training phase stores beside an adapter (empty for a plain model directory)."""
    info_file = model_dir / MODEL_INFO_FILE
    return json.loads(info_file.read_text()) if info_file.is_file() else {}


def adapter_base_path(model_dir: Path) -> Path:
    """The base model directory an adapter was trained on: ``ft_assets_model.json``, else ``adapter_config.json``."""
    info = read_model_info(model_dir)
    base = info.get("base_model_path") or json.loads((model_dir / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not base:
        raise ModelError(
            f"adapter {model_dir} names no base model ({MODEL_INFO_FILE} base_model_path and "
            "adapter_config.json base_model_name_or_path are both missing)"
        )
    base_path = Path(base)
    if not (base_path / "config.json").is_file():
        raise ModelError(f"adapter {model_dir} was trained on base model {base_path}, which is not available")
    expected = info.get("base_model_hash")
    if expected and model_content_hash(base_path) != expected:
        raise ModelError(
            f"adapter {model_dir} expects base model {base_path} with hash {expected}, "
            "but the files there have changed"
        )
    return base_path


def inference_tokenizer(model_dir: Path, chat_template: ChatTemplate | None = None) -> Any:
    """The tokenizer saved in ``model_dir``, left-padding; ``chat_template`` as in :func:`load_for_inference`."""
    trained = (model_dir / MODEL_INFO_FILE).is_file() or (model_dir.parent / MODEL_INFO_FILE).is_file()
    tokenizer = load_tokenizer(model_dir, chat_template=None if trained else chat_template)
    tokenizer.padding_side = "left"
    return tokenizer


def encode_prompts(tokenizer: Any, examples: Sequence[Example]) -> list[list[int]]:
    """Each example's prompt as token ids: the chat template up to the assistant turn, or a ``text`` row as is."""

    def encode(example: Example) -> list[int]:
        if example.text is not None:
            return tokenizer(example.text)["input_ids"]  # the tokenizer's own BOS rule, as in training
        prompt = tokenizer.apply_chat_template(
            example.prompt_messages(), tokenize=False, add_generation_prompt=True
        )
        # The template already holds any BOS the model expects; adding special tokens again would double it.
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]

    return [encode(example) for example in examples]


def eos_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The tokenizer's EOS (the trained end-of-turn token) plus any EOS ids of the model's generation config."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def output_row(
    example: Example, response: str, prompt_tokens: int, completion_tokens: int, finish_reason: str
) -> dict[str, Any]:
    """One JSONL row (the schema both backends write)."""
    return {
        "id": example.id,
        "system_prompt": example.system_prompt,
        "user_prompt": example.user_prompt,
        "assistant_response": response.strip(),
        "ground_truth": example.ground_truth,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "finish_reason": finish_reason,
        **({"contexts": list(example.contexts)} if example.contexts else {}),
    }
