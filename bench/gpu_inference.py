"""Generation throughput on a CUDA GPU: the platform's batched HF path, the seed's loop, and vLLM if installed.

    python bench/gpu_inference.py [--rows 256] [--max-new-tokens 128] [--batch-sizes 16,64,256]
        [--loop-rows 8] [--tokenizer DIR]

Builds a random-initialised Llama-shaped model of about 0.5B parameters (hidden 1024, 30 layers, GQA 16/4
heads, SmolLM2's 49,152-token vocabulary when its tokenizer is available) directly on the GPU in bf16 and
saves it to a temp directory: no download. Random weights rarely emit EOS, so nearly every row runs to
``max_new_tokens`` and tokens/s measures decoding, not early stops. Prompts are the demo test questions,
repeated to ``--rows``.

Prints generated tokens/s of ``generate_rows`` at each batch size, of the seed's one-row loop on
``--loop-rows`` rows, and of ``generate_rows_vllm`` (``ft_assets.phases.vllm_backend``) when ``import vllm``
works. Without CUDA it prints why and exits with status 0.

``--tokenizer``: a directory holding a tokenizer with a chat template; default the embedded SmolLM2's (from
the model cache, when converted) or else the embedded tiny model's (built offline; a 320-token vocabulary).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from inference_throughput import seed_loop  # this script's folder is first on sys.path

from ft_assets.config import InferencerConfig, load_settings
from ft_assets.config_sections import EMBEDDED_TINY
from ft_assets.dataset_specs import TESTING
from ft_assets.phases.datasets import Example, load_configured
from ft_assets.phases.generation import generate_rows, load_for_inference
from ft_assets.phases.models import (
    LlamaShape,
    build_random_llama,
    detect_device,
    load_tokenizer,
    resolve_base_model,
)

#: About 0.5B parameters with SmolLM2's vocabulary (see the module docstring).
MODEL_SHAPE = LlamaShape(hidden=1024, intermediate=4096, layers=30, heads=16, kv_heads=4, positions=4096)


def default_tokenizer_dir() -> Path:
    settings = load_settings()
    smollm2 = settings.model_cache_dir / "smollm2-135m-instruct"
    if (smollm2 / "tokenizer.json").is_file():
        return smollm2
    return resolve_base_model(
        EMBEDDED_TINY, cache_dir=settings.model_cache_dir, base_dir=settings.base_dir
    ).path


def build_random_model(tokenizer_dir: Path, target: Path) -> int:
    """Save a random ~0.5B Llama (bf16) with the tokenizer into ``target``; returns its parameter count."""
    import torch

    tokenizer = load_tokenizer(tokenizer_dir)
    parameters = build_random_llama(target, tokenizer, MODEL_SHAPE, device="cuda", dtype="bfloat16")
    # hand the random model's memory back to the GPU before the measured loads
    torch.cuda.empty_cache()
    return parameters


def repeated(examples: list[Example], count: int) -> list[Example]:
    return [replace(examples[i % len(examples)], id=f"r{i}") for i in range(count)]


def measure(work: Any) -> tuple[Any, float]:
    """(result, seconds) of ``work()``, the GPU's queue drained before and after."""
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    result = work()
    torch.cuda.synchronize()
    return result, time.perf_counter() - started


def hf_throughput(model_dir: Path, examples: list[Example], base: InferencerConfig, args: Any) -> None:
    """Tokens/s of the seed's loop and of ``generate_rows`` at each batch size (model freed on return)."""
    model, tokenizer = load_for_inference(model_dir, detect_device("cuda"))
    generate_rows(model, tokenizer, examples[:4], base.model_copy(update={"max_new_tokens": 4}))  # warm-up
    (_, loop_tokens), seconds = measure(
        lambda: seed_loop(model, tokenizer, examples[: args.loop_rows], args.max_new_tokens)
    )
    print(f"seed loop       : {args.loop_rows:4d} rows, {loop_tokens / seconds:8.0f} generated tokens/s")
    for batch_size in (int(size) for size in args.batch_sizes.split(",")):
        config = base.model_copy(update={"batch_size": batch_size})
        rows, seconds = measure(lambda config=config: generate_rows(model, tokenizer, examples, config))
        tokens = sum(row["completion_tokens"] for row in rows)
        print(
            f"HF batch {batch_size:4d}   : {len(rows):4d} rows, {tokens / seconds:8.0f} generated tokens/s "
            f"({len(rows) / seconds:.1f} rows/s, {tokens} tokens)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="16,64,256")
    parser.add_argument("--loop-rows", type=int, default=8)
    parser.add_argument("--tokenizer", type=Path, default=None)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_inference: no CUDA device is available; this benchmark needs a GPU (nothing was run)")
        return
    device = detect_device("cuda")
    vllm_present = importlib.util.find_spec("vllm") is not None
    print(
        f"{device.name}, {device.dtype}, torch {torch.__version__}, vLLM {'present' if vllm_present else 'absent'}"
    )

    settings = load_settings()
    base = InferencerConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
    examples = repeated(load_configured(TESTING, settings, columns=base).examples, args.rows)
    with tempfile.TemporaryDirectory(prefix="ft-assets-gpu-bench-") as scratch:
        model_dir = Path(scratch) / "model"
        tokenizer_dir = args.tokenizer or default_tokenizer_dir()
        parameters = build_random_model(tokenizer_dir, model_dir)
        print(f"random Llama: {parameters / 1e6:.0f}M parameters, tokenizer {tokenizer_dir}")
        hf_throughput(model_dir, examples, base, args)
        torch.cuda.empty_cache()

        if not vllm_present:
            print("vLLM: not installed here (pip install vllm); HF path only")
            return
        from ft_assets.phases.vllm_backend import generate_rows_vllm

        rows, seconds = measure(lambda: generate_rows_vllm(model_dir, examples, base))
        tokens = sum(row["completion_tokens"] for row in rows)
        print(
            f"vLLM            : {len(rows):4d} rows, {tokens / seconds:8.0f} generated tokens/s (engine start included)"
        )


if __name__ == "__main__":
    main()
