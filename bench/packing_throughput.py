"""Packing vs padding, one LoRA training step at a time: is padding-free packing faster where it is exact?

The same micro-batches of the demo data (batch 8) go through forward + backward of a LoRA model three ways:
padded in random order, padded in length-grouped order (the platform's default sampling), and packed
(one row per micro-batch, block-diagonal mask). Loss equality of packed and padded batches is checked on
the way. Prints tokens per CPU-second of each (one thread: robust to a busy machine) and the ratios.

    python bench/packing_throughput.py                                  # embedded SmolLM2-135M, 12 batches
    python bench/packing_throughput.py --model embedded:tiny-llama --batches 40
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 8


def _batches(
    records: list[dict[str, Any]], count: int, grouped: bool, seed: int
) -> list[list[dict[str, Any]]]:
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    if grouped:  # like transformers' LengthGroupedSampler: sort within megabatches of 50 batches
        mega = BATCH_SIZE * 50
        order = [
            i
            for start in range(0, len(order), mega)
            for i in sorted(order[start : start + mega], key=lambda i: -len(records[i]["input_ids"]))
        ]
    return [[records[i] for i in order[k : k + BATCH_SIZE]] for k in range(0, count * BATCH_SIZE, BATCH_SIZE)]


def _time(model: Any, batches: list[dict[str, Any]]) -> tuple[float, float, list[float]]:
    from ft_assets.phases.label_loss import labelled_positions_loss

    losses = []
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        loss, _, _ = labelled_positions_loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return time.process_time() - cpu, time.perf_counter() - wall, losses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT / "data" / "demo" / "train.jsonl")
    parser.add_argument("--cache-dir", type=Path, default=PROJECT_ROOT / "artifacts" / "base_model")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ft_assets.config import DatasetColumns
    from ft_assets.phases.datasets import load_dataset
    from ft_assets.phases.label_masks import tokenize_example
    from ft_assets.phases.models import load_tokenizer, resolve_base_model
    from ft_assets.phases.packing import TrainingCollator, batch_token_count

    torch.set_num_threads(1)
    base = resolve_base_model(args.model, cache_dir=args.cache_dir, base_dir=PROJECT_ROOT)
    tokenizer = load_tokenizer(base.path)
    examples = load_dataset(str(args.data), DatasetColumns(), base_dir=PROJECT_ROOT).examples
    records = [tokenize_example(example, tokenizer) for example in examples]
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)
    )
    model.train()
    padded = TrainingCollator(tokenizer.pad_token_id)
    packed = TrainingCollator(
        tokenizer.pad_token_id, pack=True, attn_implementation=model.config._attn_implementation
    )

    random_batches = _batches(records, args.batches, grouped=False, seed=0)
    grouped_batches = _batches(records, args.batches, grouped=True, seed=0)
    ways = {
        "padded, random order": [padded(b) for b in random_batches],
        "padded, length-grouped": [padded(b) for b in grouped_batches],
        "packed, random order": [packed(b) for b in random_batches],
    }
    _time(model, ways["padded, random order"][:1])  # warm-up
    speed = {}
    for name, batches in ways.items():
        tokens = sum(batch_token_count(batch) for batch in batches)
        cells = sum(batch["input_ids"].numel() for batch in batches)
        cpu, wall, losses = _time(model, batches)
        speed[name] = tokens / cpu
        if name == "padded, random order":
            reference = losses
        if name == "packed, random order":
            worst = max(abs(a - b) for a, b in zip(losses, reference, strict=True))
            print(f"packed vs padded loss, same batches: max difference {worst:.2e}")
        print(
            f"{name:>24}: {tokens / cpu:8.1f} real tokens per CPU-second ({tokens / wall:.1f}/s wall), "
            f"{tokens} real tokens in {cells} positions"
        )
    print(f"model {args.model}, {args.batches} batches of {BATCH_SIZE}, LoRA r16 all-linear, fp32, 1 thread")
    print(f"packed_vs_grouped={speed['packed, random order'] / speed['padded, length-grouped']:.3f}")
    print(f"packed_vs_random={speed['packed, random order'] / speed['padded, random order']:.3f}")


if __name__ == "__main__":
    main()
