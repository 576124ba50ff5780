"""Batched inference (``generate_rows``) against the seed's one-row-at-a-time loop, same model, same rows.

    .venv/bin/python bench/inference_throughput.py [--model embedded:smollm2-135m-instruct] [--rows 60]
        [--max-new-tokens 48] [--batch-size 16] [--device auto]
    .venv/bin/python bench/inference_throughput.py --model embedded:tiny-llama     # quick

On a machine shared with other busy processes, ``--threads 1`` gives steadier numbers: two OpenMP threads
competing for two busy cores spend much of their time waiting for each other at every operation.

The seed's loop renders one prompt with the chat template, tokenises it, calls ``model.generate`` and decodes
the new tokens, row after row. Both paths run greedy on one loaded model (fp32 on CPU), after one warm-up
generate; the loop runs first. Prints rows/s and generated tokens/s of each (wall clock, plus the process's
CPU seconds, a steadier figure when other programs share the machine), the speed-up, and the share of rows
whose responses are identical (each differing row is listed). Then times the offline metrics
(``ft_assets.phases.metrics.score_rows``) on 1,000 rows made of these responses, when that module exists.
The last line is ``ratio=<batched/loop> identical=<share 0..1>``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ft_assets.config import EvaluatorConfig, load_settings
from ft_assets.config_sections import EMBEDDED_SMOLLM2, OFFLINE_METRICS
from ft_assets.dataset_specs import TESTING
from ft_assets.phases.datasets import Example, load_configured
from ft_assets.phases.generation import generate_rows, load_for_inference
from ft_assets.phases.models import detect_device, resolve_base_model

METRIC_ROWS = 1000


def seed_loop(
    model: Any, tokenizer: Any, examples: list[Example], max_new_tokens: int
) -> tuple[list[str], int]:
    """The seed's inference: one prompt at a time. Returns (responses, generated token count)."""
    import torch

    responses, generated = [], 0
    with torch.inference_mode():
        for example in examples:
            prompt = tokenizer.apply_chat_template(
                example.prompt_messages(), tokenize=False, add_generation_prompt=True
            )
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[0, inputs["input_ids"].shape[1] :]
            generated += len(new_tokens)
            responses.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return responses, generated


def timed(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def report(name: str, rows: int, tokens: int, wall: float, cpu: float) -> None:
    print(
        f"{name:>8}: {rows} rows, {tokens} generated tokens in {wall:.1f} s wall ({cpu:.1f} s CPU): "
        f"{rows / wall:.2f} rows/s, {tokens / wall:.1f} tokens/s"
    )


def time_metrics(responses: list[dict[str, Any]]) -> None:
    try:
        from ft_assets.phases.metrics import score_rows
    except ImportError as error:
        print(f"metrics: skipped, ft_assets.phases.metrics.score_rows is not importable ({error})")
        return
    metrics = [name for name in OFFLINE_METRICS if name != "semantic_similarity"]  # needs no embedding model
    rows = [dict(responses[i % len(responses)], id=f"m{i}") for i in range(METRIC_ROWS)]
    config = EvaluatorConfig(metrics=metrics, primary_metric=metrics[0])
    score_rows(rows[:4], config)  # warm-up: ragas, sacrebleu and rouge imports
    _, wall, cpu = timed(lambda: score_rows(rows, config))
    print(f" metrics: {', '.join(metrics)} on {METRIC_ROWS} rows in {wall:.1f} s wall ({cpu:.1f} s CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=EMBEDDED_SMOLLM2, help="a base model id or directory")
    parser.add_argument("--config", default=None, help="pipeline config (model cache, test set)")
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=None, help="default: [inferencer] batch_size")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)"
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    settings = load_settings(args.config)
    resolved = resolve_base_model(args.model, cache_dir=settings.model_cache_dir, base_dir=settings.base_dir)
    device = detect_device(args.device)
    model, tokenizer = load_for_inference(Path(resolved.path), device)
    config = settings.inferencer.model_copy(
        update={
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size or settings.inferencer.batch_size,
            "do_sample": False,
            "stop_strings": [],
        }
    )
    examples = load_configured(TESTING, settings, columns=config).examples[: args.rows]
    print(
        f"model {args.model} ({resolved.path}), {device.device} {device.dtype}, {torch.get_num_threads()} threads; "
        f"{len(examples)} rows, max_new_tokens {config.max_new_tokens}, batch_size {config.batch_size}"
    )
    seed_loop(model, tokenizer, examples[:1], 2)  # warm-up: first-call allocations and lazy inits

    (loop_texts, loop_tokens), loop_wall, loop_cpu = timed(
        lambda: seed_loop(model, tokenizer, examples, config.max_new_tokens)
    )
    rows, batch_wall, batch_cpu = timed(lambda: generate_rows(model, tokenizer, examples, config))
    batch_tokens = sum(row["completion_tokens"] for row in rows)
    report("loop", len(examples), loop_tokens, loop_wall, loop_cpu)
    report("batched", len(rows), batch_tokens, batch_wall, batch_cpu)

    ratio = loop_wall / batch_wall
    differing = [
        (row["id"], text, row["assistant_response"])
        for row, text in zip(rows, loop_texts, strict=True)
        if text != row["assistant_response"]
    ]
    identical = 1 - len(differing) / len(rows)
    print(
        f" speedup: {ratio:.2f}x wall, {loop_cpu / batch_cpu:.2f}x CPU; identical responses {identical:.1%}"
    )
    for row_id, loop_text, batch_text in differing:
        print(f"  differs {row_id}:\n    loop:    {loop_text!r}\n    batched: {batch_text!r}")
    time_metrics(rows)
    print(f"ratio={ratio:.2f} identical={identical:.3f}")


if __name__ == "__main__":
    main()
