"""Throughput of each offline metric through ``score_rows`` on synthetic rows.

    .venv/bin/python bench/metrics_throughput.py [--rows 1000] [--seed 0]

Prints rows/s per metric, after a warm-up that pays the one-off imports (ragas, sacrebleu, rouge).
``semantic_similarity`` is timed twice: the first call includes the process's first model load
(transformers' one-off initialisation), the second only reloading the weights and embedding.
Embedding speed is bound by the CPU: numbers vary with what else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

from ft_assets.config import EvaluatorConfig
from ft_assets.config_sections import OFFLINE_METRICS
from ft_assets.phases.metrics import score_rows

WORDS = [
    "the",
    "model",
    "answers",
    "a",
    "question",
    "about",
    "paris",
    "france",
    "capital",
    "river",
    "city",
    "museum",
    "history",
    "people",
    "language",
    "food",
    "wine",
    "art",
    "tower",
    "bridge",
    "year",
    "century",
    "king",
    "revolution",
    "republic",
    "north",
    "south",
]


def synthetic_rows(count: int, seed: int) -> list[dict]:
    """Reference/response pairs of 1-3 sentences with partial overlap, like a mid-quality model's."""
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "."

    rows = []
    for index in range(count):
        reference = " ".join(sentence() for _ in range(rng.randint(1, 3)))
        response = reference if rng.random() < 0.2 else " ".join([reference.split(". ")[0], sentence()])
        rows.append(
            {
                "id": f"row-{index}",
                "system_prompt": None,
                "user_prompt": f"Question {index}?",
                "assistant_response": response,
                "ground_truth": reference,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = synthetic_rows(args.rows, args.seed)

    text_metrics = [name for name in OFFLINE_METRICS if name != "semantic_similarity"]
    score_rows(rows[:5], EvaluatorConfig(metrics=text_metrics, primary_metric=text_metrics[0]))
    runs = [(name, name) for name in OFFLINE_METRICS]
    runs.append(("semantic_similarity (2nd call)", "semantic_similarity"))
    print(f"{'metric':<36} {'seconds':>8} {'rows/s':>10}")
    for label, name in runs:
        config = EvaluatorConfig(metrics=[name], primary_metric=name)
        started = time.perf_counter()
        scores = score_rows(rows, config)
        elapsed = time.perf_counter() - started
        failed = sum(error is not None for error in scores.errors[name])
        note = f"  ({failed} rows failed)" if failed else ""
        print(f"{label:<36} {elapsed:>8.2f} {len(rows) / elapsed:>10.0f}{note}")


if __name__ == "__main__":
    main()
