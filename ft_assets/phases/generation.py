"""Batched generation to JSONL: base model, LoRA adapter or merged model, with the trained chat template.

Prompts are rendered with the chat template stored beside the model (a trained adapter's own tokenizer, so
the template, end-of-turn EOS and system-prompt rules are those it was trained with), tokenised once,
grouped into batches of similar length (left padding, longest batch first so an out-of-memory batch fails at
once) and generated with the model's KV cache under ``torch.inference_mode``. An adapter is merged into its
base before generation: one matmul per layer instead of two. Rows come back in input order.

Each row: ``id``, ``system_prompt``, ``user_prompt``, ``assistant_response``, ``ground_truth``,
``prompt_tokens``, ``completion_tokens`` (generated tokens, the EOS or the tokens completing a stop string
included, as vLLM and the OpenAI API count them) and ``finish_reason``: ``eos`` (an EOS token), ``stop``
(a configured stop string; the text is cut before it) or ``length`` (``max_new_tokens`` reached).
Rows of a dataset with contexts also carry ``contexts``.

The JSONL is written only after every row is generated, through a temp file renamed into place: a killed
run publishes nothing, and a rerun replaces the file whole.

``python -m ft_assets.phases.generation --model DIR --config FILE --output FILE`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_assets.config import InferencerConfig, Settings, load_settings
from ft_assets.dataset_specs import TESTING
from ft_assets.phases.datasets import Example, LoadedDataset, load_configured
from ft_assets.phases.io import atomic_file
from ft_assets.phases.models import (
    ChatTemplate,
    DeviceInfo,
    ModelError,
    configured_chat_template,
    detect_device,
)
from ft_assets.phases.progress import InferenceProgress
from ft_assets.phases.prompts import (
    adapter_base_path,
    encode_prompts,
    eos_token_ids,
    inference_tokenizer,
    output_row,
)
from ft_assets.phases.system_prompt import inference_columns
from ft_assets.secrets import hf_token

logger = logging.getLogger(__name__)

FINISH_REASONS = ("eos", "stop", "length")


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


def _load_adapter(model_dir: Path, device: DeviceInfo) -> Any:
    """The adapter merged into its base; a base of another shape is a ModelError naming both."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = adapter_base_path(model_dir)
    base = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=device.torch_dtype(), device_map=device.device
    )
    try:
        model = PeftModel.from_pretrained(base, model_dir)
    except RuntimeError as error:  # a shape mismatch: the adapter was trained on another base model
        first = next(
            (line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)
        )
        raise ModelError(
            f"adapter {model_dir} does not fit base model {base_path} "
            f"(hidden_size {base.config.hidden_size}, {base.config.num_hidden_layers} layers): {first}"
        ) from None
    return model.merge_and_unload()


def load_for_inference(
    model_dir: Path, device: DeviceInfo, *, chat_template: ChatTemplate | None = None
) -> tuple[Any, Any]:
    """Model and tokenizer for generation; an adapter is loaded onto its base and merged.

    ``chat_template`` (from ``[fine_tuner] chat_template``) applies to a plain model directory, as training
    applies it to the base model, so a baseline sees the prompts the fine-tuned model was trained on. A
    trained output (adapter or merged model with ``ft_assets_model.json``) keeps the template saved with it.
    """
    from transformers import AutoModelForCausalLM

    if not model_dir.is_dir():
        raise ModelError(f"model directory does not exist: {model_dir}")
    if (model_dir / "adapter_config.json").is_file():
        model = _load_adapter(model_dir, device)
    elif (model_dir / "config.json").is_file():
        # Straight onto the device: no full copy in host memory first.
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=device.torch_dtype(), device_map=device.device
        )
    else:
        raise ModelError(
            f"{model_dir} holds neither a model (config.json) nor an adapter (adapter_config.json)"
        )
    model.eval()
    return model, inference_tokenizer(model_dir, chat_template)


def _length_batches(lengths: list[int], batch_size: int) -> Iterable[list[int]]:
    """Row indices in batches of similar prompt length, longest first (little padding; memory errors early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _generation_kwargs(config: InferencerConfig, tokenizer: Any, model: Any) -> dict[str, Any]:
    from transformers import StoppingCriteriaList, StopStringCriteria

    kwargs: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "repetition_penalty": config.repetition_penalty,
        "eos_token_id": eos_token_ids(tokenizer, model.generation_config),
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,
    }
    if config.do_sample:
        # top_k=0: no top-k cut unless configured (transformers would otherwise apply its default of 50).
        kwargs.update(temperature=config.temperature or 1.0, top_p=config.top_p, top_k=0, min_p=config.min_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None, min_p=None)
    if config.stop_strings:
        # Built once: generate() would rebuild it (a pass over the whole vocabulary) for every batch.
        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [StopStringCriteria(tokenizer=tokenizer, stop_strings=list(config.stop_strings))]
        )
    return kwargs


def finish(
    tokens: Sequence[int],
    eos_ids: Iterable[int],
    stop_strings: Sequence[str],
    decode: Callable[[list[int]], str],
) -> tuple[str, str, int]:
    """(response text, finish reason, completion token count) of one row's generated tokens.

    After a row finishes, generate() pads it with ``pad_token_id``; that may be the EOS itself (SmolLM2), so
    the first EOS ends the row and a stop string is looked for in the text before it. A pad token that is
    not an EOS is skipped by ``decode`` and never counted: a stopped row counts the tokens up to the one
    completing its stop string, a row that ran to ``length`` produced every token itself.
    """
    eos = set(eos_ids)
    end = next((i for i, token in enumerate(tokens) if token in eos), None)
    kept = list(tokens if end is None else tokens[:end])
    text = decode(kept)
    cuts = [cut for cut in (text.find(stop) for stop in stop_strings) if cut != -1]
    if cuts:
        count = next(
            k for k in range(1, len(kept) + 1) if any(stop in decode(kept[:k]) for stop in stop_strings)
        )
        return text[: min(cuts)], "stop", count
    if end is not None:
        return text, "eos", end + 1
    return text, "length", len(kept)


def generate_rows(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    config: InferencerConfig,
    progress: InferenceProgress | None = None,
) -> list[dict[str, Any]]:
    """One output row per example, in input order (see the module docstring for the row schema).

    ``progress`` (default: lines in this module's logger) hears of every generated batch.
    """
    import torch

    encoded = encode_prompts(tokenizer, examples)
    kwargs = _generation_kwargs(config, tokenizer, model)
    eos_ids = kwargs["eos_token_id"]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    rows: list[dict[str, Any]] = [{}] * len(examples)
    batches = list(_length_batches([len(ids) for ids in encoded], config.batch_size))
    torch.manual_seed(config.seed)
    progress = progress or InferenceProgress(len(examples), logger.info)
    progress.start(len(batches), config.batch_size)
    with torch.inference_mode():
        for batch in batches:
            inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            inputs = inputs.to(model.device)
            output = model.generate(**inputs, **kwargs)
            new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
            for i, tokens in zip(batch, new_tokens, strict=True):
                response, reason, count = finish(tokens, eos_ids, config.stop_strings, decode)
                rows[i] = output_row(examples[i], response, len(encoded[i]), count, reason)
            progress.advance(len(batch))
    return rows


def write_jsonl(rows: Iterable[dict[str, Any]], output_path: Path) -> None:
    """Publish ``rows`` at ``output_path`` atomically (whole file or nothing; a rerun replaces it)."""
    with atomic_file(output_path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(
    model_dir: Path,
    dataset: LoadedDataset,
    config: InferencerConfig,
    output_path: Path,
    *,
    chat_template: ChatTemplate | None = None,
    progress: InferenceProgress | None = None,
) -> GenerationResult:
    """Generate a response for every row of ``dataset`` and publish the JSONL atomically at ``output_path``.

    ``chat_template``: see :func:`load_for_inference` (HF backend and vLLM alike). ``progress``: see
    :func:`generate_rows` (the vLLM backend generates all rows in one call and reports none).
    """
    device = detect_device(config.device)
    if config.backend == "vllm":
        from ft_assets.phases.vllm_backend import generate_rows_vllm

        started = time.perf_counter()
        rows = generate_rows_vllm(model_dir, dataset.examples, config, chat_template=chat_template)
    else:
        model, tokenizer = load_for_inference(model_dir, device, chat_template=chat_template)
        started = time.perf_counter()
        rows = generate_rows(model, tokenizer, dataset.examples, config, progress)
    duration = time.perf_counter() - started
    write_jsonl(rows, output_path)
    reasons = {reason: sum(1 for r in rows if r["finish_reason"] == reason) for reason in FINISH_REASONS}
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


def load_test_set_for(
    model_dir: Path, settings: Settings, token: str | None = None
) -> tuple[InferencerConfig, LoadedDataset, str | None]:
    """The ``[inferencer]`` config and test set to run ``model_dir`` on, and a system-prompt mismatch warning.

    With no system prompt configured, a model this project trained is run with the one it was trained with
    (:func:`ft_assets.phases.system_prompt.inference_columns`), wherever inference is started from.
    """
    config, prompt_warning = inference_columns(settings.inferencer, model_dir)
    return config, load_configured(TESTING, settings, token, columns=config), prompt_warning


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    config, dataset, prompt_warning = load_test_set_for(args.model, settings, hf_token())
    if prompt_warning:
        logging.getLogger(__name__).warning(prompt_warning)
    template = configured_chat_template(settings)
    result = generate(args.model, dataset, config, args.output, chat_template=template)
    print(json.dumps({"jsonl": str(result.jsonl_path), **result.metrics}, indent=2))


if __name__ == "__main__":
    main()
