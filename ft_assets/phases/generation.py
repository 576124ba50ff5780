"""Batched generation to JSONL: base model, LoRA adapter or merged model, with the trained chat template.

Rows are generated in batches of similar prompt length (left padding) and written in input order.
``python -m ft_assets.phases.generation --model DIR --config FILE --output FILE`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_assets.config import InferencerConfig, load_settings
from ft_assets.phases.datasets import Example, LoadedDataset, load_dataset
from ft_assets.phases.io import atomic_file
from ft_assets.phases.models import MODEL_INFO_FILE, DeviceInfo, ModelError, detect_device, load_tokenizer


@dataclass
class GenerationResult:
    """What an inference run wrote and how fast."""

    jsonl_path: Path
    rows: int
    prompt_tokens: int
    generated_tokens: int
    duration_s: float
    finish_reasons: dict[str, int]
    empty_responses: int
    device: DeviceInfo
    backend: str = "hf"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        seconds = max(self.duration_s, 1e-9)
        return {
            "rows": float(self.rows),
            "rows_per_s": self.rows / seconds,
            "generated_tokens": float(self.generated_tokens),
            "generated_tokens_per_s": self.generated_tokens / seconds,
            "prompt_tokens": float(self.prompt_tokens),
            "empty_responses": float(self.empty_responses),
            "duration_s": self.duration_s,
            **{f"finish_{reason}": float(count) for reason, count in self.finish_reasons.items()},
        }


def read_model_info(model_dir: Path) -> dict[str, Any]:
    """The metadata the training phase stores beside an adapter (empty for a plain model directory)."""
    info_file = model_dir / MODEL_INFO_FILE
    return json.loads(info_file.read_text()) if info_file.is_file() else {}


def load_for_inference(model_dir: Path, device: DeviceInfo) -> tuple[Any, Any]:
    """Model and tokenizer for generation. An adapter is loaded onto its base and merged for speed."""
    import torch
    from transformers import AutoModelForCausalLM

    if not model_dir.is_dir():
        raise ModelError(f"model directory does not exist: {model_dir}")
    info = read_model_info(model_dir)
    dtype = device.torch_dtype()
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = Path(info.get("base_model_path") or json.loads(
            (model_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
        if not (base_path / "config.json").is_file():
            raise ModelError(f"adapter {model_dir} was trained on base model {base_path}, which is not available")
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        expected = info.get("base_model_hash")
        if expected:
            from ft_assets.phases.models import model_content_hash

            if model_content_hash(base_path) != expected:
                raise ModelError(
                    f"adapter {model_dir} expects base model {base_path} with hash {expected}, "
                    "but the files there have changed"
                )
        try:
            model = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
        except RuntimeError as error:  # shape mismatch: the adapter belongs to another base model
            raise ModelError(f"adapter {model_dir} does not fit base model {base_path}: {error}") from None
    elif (model_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    else:
        raise ModelError(f"{model_dir} holds neither a model (config.json) nor an adapter (adapter_config.json)")
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    model.to(device.device)
    model.eval()
    return model, tokenizer


def _batches(lengths: list[int], batch_size: int) -> Iterable[list[int]]:
    """Row indices grouped by similar prompt length, so little padding is computed."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _generation_kwargs(config: InferencerConfig, tokenizer: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "repetition_penalty": config.repetition_penalty,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if config.do_sample:
        kwargs.update(temperature=config.temperature or 1.0, top_p=config.top_p)
        if config.min_p is not None:
            kwargs["min_p"] = config.min_p
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if config.stop_strings:
        kwargs.update(stop_strings=list(config.stop_strings), tokenizer=tokenizer)
    return kwargs


def _finish(tokens: list[int], text: str, eos_id: int, pad_id: int, config: InferencerConfig) -> tuple[str, str, int]:
    """(response text, finish reason, generated token count) for one row's new tokens."""
    count = 0
    reason = "length"
    for token in tokens:
        if token == eos_id:
            reason = "eos"
            break
        if token == pad_id and pad_id != eos_id:
            break
        count += 1
    for stop in config.stop_strings:
        cut = text.find(stop)
        if cut != -1:
            return text[:cut], "stop", count
    return text, reason, count


def generate_rows(model: Any, tokenizer: Any, examples: list[Example], config: InferencerConfig) -> list[dict[str, Any]]:
    """One output row per example, in input order."""
    import torch

    prompts = [
        tokenizer.apply_chat_template(e.prompt_messages(), tokenize=False, add_generation_prompt=True)
        for e in examples
    ]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    kwargs = _generation_kwargs(config, tokenizer)
    rows: list[dict[str, Any] | None] = [None] * len(examples)
    torch.manual_seed(config.seed)
    for batch in _batches([len(e) for e in encoded], config.batch_size):
        inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(model.device)
        output = model.generate(**inputs, **kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i, tokens, text in zip(batch, new_tokens, texts, strict=True):
            response, reason, count = _finish(tokens, text, tokenizer.eos_token_id, tokenizer.pad_token_id, config)
            example = examples[i]
            rows[i] = {
                "id": example.id,
                "system_prompt": example.system_prompt,
                "user_prompt": example.user_prompt,
                "assistant_response": response.strip(),
                "ground_truth": example.ground_truth,
                "prompt_tokens": len(encoded[i]),
                "completion_tokens": count,
                "finish_reason": reason,
                **({"contexts": list(example.contexts)} if example.contexts else {}),
            }
    return [row for row in rows if row is not None]


def generate(
    model_dir: Path, dataset: LoadedDataset, config: InferencerConfig, output_path: Path
) -> GenerationResult:
    """Generate a response for every row of ``dataset`` and publish the JSONL atomically at ``output_path``."""
    device = detect_device(config.device)
    if config.backend == "vllm":
        from ft_assets.phases.vllm_backend import generate_rows_vllm

        started = time.perf_counter()
        rows = generate_rows_vllm(model_dir, dataset.examples, config)
    else:
        model, tokenizer = load_for_inference(model_dir, device)
        started = time.perf_counter()
        rows = generate_rows(model, tokenizer, dataset.examples, config)
    duration = time.perf_counter() - started
    with atomic_file(output_path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[row["finish_reason"]] = reasons.get(row["finish_reason"], 0) + 1
    return GenerationResult(
        jsonl_path=output_path,
        rows=len(rows),
        prompt_tokens=sum(r["prompt_tokens"] for r in rows),
        generated_tokens=sum(r["completion_tokens"] for r in rows),
        duration_s=duration,
        finish_reasons=reasons,
        empty_responses=sum(1 for r in rows if not r["assistant_response"]),
        device=device,
        backend=config.backend,
    )


def load_test_data(config: InferencerConfig, base_dir: Path, token: str | None = None) -> LoadedDataset:
    """The test split, ground truth optional (reference metrics check for it in preflight)."""
    return load_dataset(
        config.testing_data_id, config, base_dir=base_dir, split=config.dataset_split,
        revision=config.dataset_revision, token=token, require_ground_truth=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    dataset = load_test_data(settings.inferencer, settings.base_dir, os.environ.get("HF_TOKEN"))
    result = generate(args.model, dataset, settings.inferencer, args.output)
    print(json.dumps({"jsonl": str(result.jsonl_path), **result.metrics}, indent=2))


if __name__ == "__main__":
    main()
