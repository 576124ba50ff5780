"""What a LoRA training step costs, side by side on the same demo micro-batches (batch 8), forward + backward:

- ``--compare packing``: padded in random order, padded in length-grouped order (the platform's default
  sampling) and packed (one row per micro-batch, block-diagonal mask): is exact packing faster?
- ``--compare head``: TRL's fused LM head (what SFTTrainer runs; on the CPU it scores every position) vs
  the platform's loss with the LM head only at labelled positions.

Losses of the compared ways are checked equal on the way. Prints real tokens per CPU-second (one thread:
robust to a busy machine) and the ratio lines last.

    python bench/train_step_cost.py --compare packing                # embedded SmolLM2-135M, 12 batches
    python bench/train_step_cost.py --compare head --batches 6
    python bench/train_step_cost.py --model embedded:tiny-llama --batches 40
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


def _labelled_positions(model: Any, batch: dict[str, Any]) -> Any:
    from ft_assets.phases.label_loss import labelled_positions_loss

    return labelled_positions_loss(model, batch)[0]


def _trl_fused_head(model: Any, batch: dict[str, Any]) -> Any:
    outputs = model(**batch, use_cache=False, fused_lm_head=True)
    return -outputs.log_probs.sum() / outputs.label_mask.sum()


def _time(
    model: Any, batches: list[dict[str, Any]], loss_of: Any = _labelled_positions
) -> tuple[float, float, list[float]]:
    losses = []
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        loss = loss_of(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return time.process_time() - cpu, time.perf_counter() - wall, losses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--compare", choices=["packing", "head"], default="packing")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT / "data" / "demo" / "train.jsonl")
    parser.add_argument("--cache-dir", type=Path, default=PROJECT_ROOT / "artifacts" / "base_model")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from ft_assets.config_sections import DatasetColumns
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
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)
    )
    model.train()
    padded = TrainingCollator(tokenizer.pad_token_id)
    packed = TrainingCollator(
        tokenizer.pad_token_id, pack=True, attn_implementation=model.config._attn_implementation
    )

    random_batches = _batches(records, args.batches, grouped=False, seed=0)
    if args.compare == "packing":
        grouped_batches = _batches(records, args.batches, grouped=True, seed=0)
        ways = {
            "padded, random order": ([padded(b) for b in random_batches], _labelled_positions),
            "padded, length-grouped": ([padded(b) for b in grouped_batches], _labelled_positions),
            "packed, random order": ([packed(b) for b in random_batches], _labelled_positions),
        }
        reference, compared = "padded, random order", "packed, random order"
    else:
        batches = [padded(b) for b in random_batches]
        ways = {
            "TRL fused head": (batches, _trl_fused_head),
            "labelled positions": (batches, _labelled_positions),
        }
        reference, compared = "TRL fused head", "labelled positions"
    _time(model, [padded(random_batches[0])])  # warm-up
    speed, losses = {}, {}
    for name, (batches, loss_of) in ways.items():
        tokens = sum(batch_token_count(batch) for batch in batches)
        cells = sum(batch["input_ids"].numel() for batch in batches)
        cpu, wall, losses[name] = _time(model, batches, loss_of)
        speed[name] = tokens / cpu
        print(
            f"{name:>24}: {tokens / cpu:8.1f} real tokens per CPU-second ({tokens / wall:.1f}/s wall), "
            f"{tokens} real tokens in {cells} positions"
        )
    worst = max(abs(a - b) for a, b in zip(losses[compared], losses[reference], strict=True))
    print(f"{compared} vs {reference}: largest loss difference on the same batches {worst:.2e}")
    print(f"model {args.model}, {args.batches} batches of {BATCH_SIZE}, LoRA r16 all-linear, fp32, 1 thread")
    baseline = "padded, length-grouped" if args.compare == "packing" else reference
    print(f"ratio={speed[compared] / speed[baseline]:.3f} ({compared} / {baseline}, tokens per CPU-second)")


if __name__ == "__main__":
    main()
