"""GPU training throughput of the project's ``train()``: bf16 LoRA and 4-bit QLoRA on a ~0.5B Llama.

No download: the base model is a randomly initialised Llama-shaped model (hidden 1024, 24 layers,
16 heads, intermediate 4096, vocab 32k: ~0.47B parameters) saved to a temp directory in bf16, with the
embedded tiny model's byte-level BPE tokenizer. The data are synthetic text rows of about
``--seq-len`` tokens each (trained on every token). For each mode it prints non-padding tokens/s over
steps 2..N and the model FLOPs utilisation

    MFU = 6 * N * tokens/s / peak bf16 FLOP/s

with N the parameters that do matmuls (all but the input embedding; attention score FLOPs ignored).

6N is the usual dense-training count; LoRA skips the weight gradients of the frozen weights (~4N per
token), so the hardware does about 2/3 of what the 6N MFU credits.

    python bench/gpu_train.py                       # H100 SXM peak (989 TFLOP/s dense bf16)
    python bench/gpu_train.py --peak-flops 756e12 --steps 50 --modes lora   # H100 PCIe

Without CUDA it prints a message and exits with status 0 (``--cpu-smoke`` runs a tiny shape on CPU to
check the script itself).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from train_throughput import token_meter

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "maria", "lopez", "lives", "in", "lyon",
         "extract", "name", "city", "age", "json", "capital", "of", "france", "paris", "assistant", "helpful")  # fmt: skip


def build_base_model(target: Path, args: argparse.Namespace, device: str) -> tuple[int, int]:
    """Save a random Llama with the tiny tokenizer to ``target``; returns (all parameters, matmul parameters)."""
    from ft_assets.phases.models import LlamaShape, build_random_llama, tiny_tokenizer

    shape = LlamaShape(
        hidden=args.hidden_size,
        intermediate=args.intermediate_size,
        layers=args.layers,
        heads=args.heads,
        vocab=args.vocab_size,
        positions=max(2048, 2 * args.seq_len),
        tie_embeddings=False,
    )
    dtype = "bfloat16" if device == "cuda" else "float32"
    parameters = build_random_llama(target, tiny_tokenizer(), shape, device=device, dtype=dtype)
    # the input embedding is a lookup, not a matmul (untied, so the output head still counts)
    return parameters, parameters - args.vocab_size * args.hidden_size


def write_rows(path: Path, tokenizer: Any, rows: int, seq_len: int) -> None:
    """Text rows of just under ``seq_len`` tokens (byte-level BPE splits on spaces, so counts add up per word)."""
    cost = {word: len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) for word in WORDS}
    rng = random.Random(0)
    budget = seq_len - 4  # room for the EOS the trainer appends
    with path.open("w") as handle:
        for _ in range(rows):
            words: list[str] = []
            used = 0
            while True:
                word = rng.choice(WORDS)
                if used + cost[word] > budget:
                    break
                words.append(word)
                used += cost[word]
            handle.write(json.dumps({"text": " " + " ".join(words)}) + "\n")


def run_mode(mode: str, base: Any, data: Path, args: argparse.Namespace, scratch: Path) -> dict[str, float]:
    import torch

    from ft_assets.config import build_settings
    from ft_assets.phases.training import load_training_data, train

    settings = build_settings(
        {
            "fine_tuner": {
                "base_model_id": str(base.path),
                "training_data_id": str(data),
                "validation_data_id": None,
                "dataset_format": "text",
                "max_length": args.seq_len,
                "on_bad_rows": "drop",
                "max_steps": args.steps,
                "per_device_train_batch_size": args.batch_size,
                "learning_rate": 1e-4,
                "rank": 16,
                "lora_alpha": 32,
                "logging_steps": 10,
                "save_steps": args.steps + 1,  # checkpoints are not what is measured here
                "load_in_4bit": mode == "qlora",
                "gradient_checkpointing": args.gradient_checkpointing,
                "device": "cpu" if args.cpu_smoke else "auto",
            },
            "pipeline": {"artifacts_root": str(scratch / "artifacts")},
        },
        source="bench/gpu_train.py",
        base_dir=PROJECT_ROOT,
    )
    train_set, _ = load_training_data(settings)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    meter = token_meter()
    result = train(
        settings,
        base,
        train_set,
        None,
        output_dir=scratch / f"adapter-{mode}",
        checkpoint_root=scratch / "checkpoints",
        callbacks=[meter],
    )
    summary = meter.summary()
    summary["final_loss"] = result.metrics["train_loss"]
    summary["device"] = f"{result.device.name} ({result.device.dtype})"
    if torch.cuda.is_available():
        summary["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--peak-flops", type=float, default=989e12, help="peak dense bf16 FLOP/s of the GPU")
    parser.add_argument(
        "--modes", default="lora,qlora", help="comma-separated: lora (bf16), qlora (4-bit nf4)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--intermediate-size", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--cpu-smoke", action="store_true", help="run on CPU (use with a tiny shape)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            "gpu_train: no CUDA device available; nothing to benchmark (see --cpu-smoke to check the script)"
        )
        return 0
    from transformers import AutoTokenizer

    from ft_assets.phases.models import resolve_base_model

    failures = 0
    with tempfile.TemporaryDirectory(prefix="gpu-train-bench-") as tmp:
        scratch = Path(tmp)
        device = "cpu" if args.cpu_smoke else "cuda"
        parameters, matmul_parameters = build_base_model(scratch / "base", args, device)
        base = resolve_base_model(str(scratch / "base"), cache_dir=scratch, base_dir=PROJECT_ROOT)
        data = scratch / "train.jsonl"
        write_rows(data, AutoTokenizer.from_pretrained(base.path), args.steps * args.batch_size, args.seq_len)
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        print(
            f"{gpu}: random Llama {parameters / 1e6:.1f}M params, {matmul_parameters / 1e6:.1f}M in matmuls (hidden {args.hidden_size}, {args.layers} layers, "
            f"{args.heads} heads, vocab {args.vocab_size}), batch {args.batch_size} x ~{args.seq_len} tokens, "
            f"{args.steps} steps, LoRA r16 all-linear, gradient_checkpointing={args.gradient_checkpointing}, "
            f"peak {args.peak_flops:.3g} FLOP/s",
            flush=True,
        )
        for mode in args.modes.split(","):
            try:
                result = run_mode(mode, base, data, args, scratch)
            except Exception:  # report the failure, still measure the other modes
                failures += 1
                print(f"{mode}: FAILED\n{traceback.format_exc()}", flush=True)
                continue
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            mfu = 6 * matmul_parameters * result["tokens_per_s"] / args.peak_flops
            memory = (
                f", peak GPU memory {result['peak_gpu_mem_gib']:.1f} GiB"
                if "peak_gpu_mem_gib" in result
                else ""
            )
            print(
                f"{mode}: {result['tokens_per_s']:.0f} non-padding tokens/s ({result['tokens']} tokens, "
                f"{result['measured_steps']} steps in {result['seconds']:.2f} s), MFU {mfu:.1%}{memory}, "
                f"final loss {result['final_loss']:.3f}, {result['device']}",
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
