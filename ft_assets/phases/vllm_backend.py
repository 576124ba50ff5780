"""vLLM backend for batched generation (``[inferencer] backend = "vllm"``): same rows, continuous batching.

Needs a CUDA GPU and ``pip install vllm`` (not a project dependency: it pins its own torch build). It has
not been run: the development machines have no GPU, and the GPU machine used for ``bench/gpu_inference.py``
(an H100) had no vLLM and no network to install it. The code follows vLLM's documented offline API (``LLM``,
``SamplingParams``, ``LoRARequest``, prompts as ``{"prompt_token_ids": [...]}``, ``CompletionOutput``'s
``finish_reason``/``stop_reason``); the tests check only its errors without vLLM or CUDA.
``bench/gpu_inference.py`` runs it beside the HF path wherever ``import vllm`` works.

- A LoRA adapter directory is served as ``LoRARequest`` on its base model (``base_model_path`` in
  ``ft_assets_model.json``, checked against ``base_model_hash`` as the HF path does); ``max_lora_rank`` is
  the adapter's ``r``. A merged or plain model directory is loaded directly.
- Prompts are rendered and tokenised by the same code as the HF path (:func:`encode_prompts` with the
  adapter directory's tokenizer and chat template) and given to vLLM as token ids, so both backends see
  identical prompts; the EOS ids are passed as ``stop_token_ids``.
- Greedy (``do_sample = false``) is ``temperature = 0``; sampling uses ``temperature`` (0 meaning 1.0, as on
  the HF path), ``top_p``, ``min_p``, ``repetition_penalty`` and ``seed``.
- ``finish_reason``: vLLM's ``length`` is ``length``; ``stop`` with a matched stop string is ``stop``; ``stop``
  on an EOS or stop token id is ``eos``. vLLM drops the stop string from the text, like the HF path.
  ``completion_tokens`` is ``len(token_ids)`` (EOS included), the HF path's count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ft_assets.config import InferencerConfig
from ft_assets.phases.datasets import Example
from ft_assets.phases.models import ModelError, detect_device
from ft_assets.phases.prompts import (
    adapter_base_path,
    encode_prompts,
    eos_token_ids,
    inference_tokenizer,
    output_row,
)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise ModelError(
            f"[inferencer] backend = 'vllm' needs vLLM, which is not installed ({error}); "
            "pip install vllm on a CUDA machine, or set backend = 'hf'"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise ModelError(
            "[inferencer] backend = 'vllm' needs a CUDA GPU and none is available; set backend = 'hf'"
        )
    return vllm


def _finish_reason(completion: Any) -> str:
    if completion.finish_reason == "length":
        return "length"
    # stop_reason: the matched stop string, the matched stop token id, or None for the tokenizer's EOS.
    return "stop" if isinstance(completion.stop_reason, str) else "eos"


def engine_arguments(model_dir: Path, config: InferencerConfig) -> tuple[dict[str, Any], Path, bool]:
    """``vllm.LLM`` keyword arguments for ``model_dir`` (dtype and ``max_model_len`` aside), the weights
    directory, and whether ``model_dir`` is a LoRA adapter served on top of those weights."""
    if not model_dir.is_dir():
        raise ModelError(f"model directory does not exist: {model_dir}")
    adapter_config = model_dir / "adapter_config.json"
    if adapter_config.is_file():
        weights = adapter_base_path(model_dir)
        rank = int(json.loads(adapter_config.read_text()).get("r", 16))
        engine_args: dict[str, Any] = {"model": str(weights), "enable_lora": True, "max_lora_rank": rank}
    elif (model_dir / "config.json").is_file():
        weights = model_dir
        engine_args = {"model": str(model_dir)}
    else:
        raise ModelError(
            f"{model_dir} holds neither a model (config.json) nor an adapter (adapter_config.json)"
        )
    engine_args.update(
        tokenizer=str(model_dir),
        seed=config.seed,
        # vLLM schedules continuously; batch_size bounds the sequences it runs at once, as it bounds a batch
        # of the HF path (and its memory).
        max_num_seqs=config.batch_size,
    )
    return engine_args, weights, adapter_config.is_file()


def generate_rows_vllm(
    model_dir: Path,
    examples: Sequence[Example],
    config: InferencerConfig,
    *,
    chat_template: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One output row per example, in input order, with the same schema as :func:`generate_rows`."""
    vllm = _import_vllm()
    from transformers import GenerationConfig
    from vllm.lora.request import LoRARequest

    engine_args, weights, is_adapter = engine_arguments(model_dir, config)
    tokenizer = inference_tokenizer(model_dir, chat_template)
    encoded = encode_prompts(tokenizer, examples)
    lora = LoRARequest("adapter", 1, str(model_dir)) if is_adapter else None
    generation_config = (
        GenerationConfig.from_pretrained(weights) if (weights / "generation_config.json").is_file() else None
    )
    llm = vllm.LLM(
        **engine_args,
        dtype=detect_device("cuda").dtype,
        max_model_len=max(len(ids) for ids in encoded) + config.max_new_tokens,
    )
    sampling = vllm.SamplingParams(
        max_tokens=config.max_new_tokens,
        temperature=(config.temperature or 1.0) if config.do_sample else 0.0,
        top_p=config.top_p if config.do_sample else 1.0,
        min_p=(config.min_p or 0.0) if config.do_sample else 0.0,
        repetition_penalty=config.repetition_penalty,
        seed=config.seed,
        stop=list(config.stop_strings) or None,
        stop_token_ids=eos_token_ids(tokenizer, generation_config),
        skip_special_tokens=True,
    )
    outputs = llm.generate(
        [{"prompt_token_ids": ids} for ids in encoded], sampling, lora_request=lora, use_tqdm=False
    )
    rows = []
    for example, ids, output in zip(examples, encoded, outputs, strict=True):
        completion = output.outputs[0]
        rows.append(
            output_row(
                example, completion.text, len(ids), len(completion.token_ids), _finish_reason(completion)
            )
        )
    return rows
