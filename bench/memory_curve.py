"""Peak memory of fine-tuning against ``max_length`` and batch size: the two knobs that bound it.

Each point trains the embedded tiny Llama (LoRA, the project's ``train()``) for a few steps in a fresh
subprocess, on rows that fill about 90% of ``max_length`` after templating (longer rows are dropped or refused
by the training phase, so ``max_length`` is the longest sequence a batch can hold). The subprocess reports
its peak RSS before training (imports, tokenizer, data) and after; the difference is what training added.

    python bench/memory_curve.py                                   # 3 x 3 grid
    python bench/memory_curve.py --max-lengths 128,1024 --batch-sizes 2,16 --json

Prints one table row per point: max_length, batch size, peak RSS (MiB), training increment (MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "MEMORY_RESULT "
#: Rows fill this share of max_length after templating.
FILL = 0.9
FILLER = "Maria Lopez is 34 and lives in Lyon; her brother Paul is 31 and lives in Oslo."


def _peak_rss_mib() -> float:
    """This process's peak resident memory, in MiB."""
    status = Path("/proc/self/status")
    if status.is_file():
        # VmHWM starts afresh at exec; ru_maxrss on Linux keeps the forking parent's peak (pytest's, here)
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        1 << 20 if sys.platform == "darwin" else 1024
    )


def _rows_filling(tokenizer: Any, max_length: int, count: int) -> list[dict[str, str]]:
    """``count`` qa rows whose templated length is just under ``FILL * max_length`` tokens."""
    target = int(FILL * max_length)

    def row(words: int) -> dict[str, str]:
        text = " ".join((FILLER.split() * (words // len(FILLER.split()) + 1))[:words])
        return {"question": "Who lives where? " + text, "answer": text}

    def length(words: int) -> int:
        item = row(words)
        messages = [
            {"role": "user", "content": item["question"]},
            {"role": "assistant", "content": item["answer"]},
        ]
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    low, high = 1, max_length
    while low < high:  # the most words whose row still fits the target
        middle = (low + high + 1) // 2
        low, high = (middle, high) if length(middle) <= target else (low, middle - 1)
    return [row(low)] * count


def worker(max_length: int, batch_size: int, steps: int, cache_dir: Path, workdir: Path) -> dict[str, float]:
    """Train one point in this process; return its peak RSS before and after training."""
    from ft_assets.config import build_settings
    from ft_assets.config_sections import EMBEDDED_TINY
    from ft_assets.phases.datasets import load_dataset
    from ft_assets.phases.models import load_tokenizer, resolve_base_model
    from ft_assets.phases.training import train

    base = resolve_base_model(EMBEDDED_TINY, cache_dir=cache_dir, base_dir=PROJECT_ROOT)
    rows = _rows_filling(load_tokenizer(base.path), max_length, batch_size * steps)
    data = workdir / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    settings = build_settings(
        {
            "fine_tuner": {
                "base_model_id": EMBEDDED_TINY,
                "training_data_id": str(data),
                "validation_data_id": "",
                "max_steps": steps,
                "per_device_train_batch_size": batch_size,
                "max_length": max_length,
                "save_steps": steps + 1,  # no checkpoint: their writes are not what is measured
                "logging_steps": steps,
                "device": "cpu",
            },
            "pipeline": {"artifacts_root": str(workdir), "model_cache_dir": str(cache_dir)},
        },
        base_dir=PROJECT_ROOT,
    )
    train_set = load_dataset(str(data), settings.fine_tuner, base_dir=PROJECT_ROOT, require_ground_truth=True)
    # what train() imports, loaded now: the increment is then training's own memory, not the libraries'
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    before = _peak_rss_mib()
    result = train(
        settings, base, train_set, None, output_dir=workdir / "adapter", checkpoint_root=workdir / "ckpt"
    )
    after = _peak_rss_mib()
    return {
        "max_length": max_length,
        "batch_size": batch_size,
        "steps": result.metrics["steps"],
        "peak_rss_mib": after,
        "before_training_mib": before,
        "training_increment_mib": after - before,
    }


def measure(
    max_length: int, batch_size: int, *, steps: int = 2, cache_dir: Path | None = None
) -> dict[str, float]:
    """One point of the curve, measured in a fresh subprocess (its peak RSS is this point's alone)."""
    with tempfile.TemporaryDirectory(prefix="memory-curve-") as folder:
        cache = cache_dir or Path(folder) / "cache"
        command = [sys.executable, __file__, "--worker", "--max-lengths", str(max_length),
                   "--batch-sizes", str(batch_size), "--steps", str(steps), "--cache", str(cache),
                   "--workdir", folder]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"point ({max_length}, {batch_size}) failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-lengths", default="128,512,1024")
    parser.add_argument("--batch-sizes", default="2,8,16")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--cache", type=Path, default=None, help="model cache (default: a temp folder per point)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="points measured at once")
    parser.add_argument("--json", action="store_true", help="print the points as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        point = worker(
            _ints(args.max_lengths)[0], _ints(args.batch_sizes)[0], args.steps, args.cache, args.workdir
        )
        print(RESULT_PREFIX + json.dumps(point), flush=True)
        return
    grid = [(length, batch) for length in _ints(args.max_lengths) for batch in _ints(args.batch_sizes)]
    with ThreadPoolExecutor(args.parallel) as pool:
        points = list(pool.map(lambda p: measure(*p, steps=args.steps, cache_dir=args.cache), grid))
    if args.json:
        print(json.dumps(points, indent=2))
        return
    print("| max_length | batch size | peak RSS (MiB) | training adds (MiB) |")
    print("|---:|---:|---:|---:|")
    for point in points:
        print(
            f"| {point['max_length']} | {point['batch_size']} | {point['peak_rss_mib']:.0f} "
            f"| {point['training_increment_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
