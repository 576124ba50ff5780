"""Paired comparison of the fine-tuned and the base model, with seeded bootstrap confidence intervals.

Framework-free: inference rows and their :class:`~ft_assets.phases.metrics.MetricScores` in, plain
dicts out (they go into the JSON summary, the workbook, MLflow and the gates unchanged).

- A row of one side is matched to the other side's row with the same ``id``; a delta is computed only
  over the rows that scored (non-NaN) on *both* sides, so a failed row never drops out of one mean only.
- Intervals are percentile bootstrap intervals: ``resamples`` draws of the row indices with
  replacement (numpy's PCG64 seeded with ``seed``), the statistic recomputed on each draw, and the
  ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those values. For a delta the
  *same* draw of pairs gives the fine-tuned mean, the base mean and the delta (a paired bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ft_assets.errors import FtAssetsError
from ft_assets.phases.metrics import MetricScores

#: Bootstrap draws hold at most this many indices at once (memory stays ~16 MB whatever the row count).
_INDICES_PER_CHUNK = 2_000_000


class ComparisonError(FtAssetsError, ValueError):
    """The two sides cannot be paired (e.g. an ``id`` occurs twice); the message names the row."""


@dataclass(frozen=True)
class Bootstrap:
    """How confidence intervals are drawn: ``[evaluator] bootstrap_resamples``, ``bootstrap_seed``,
    ``confidence_level``."""

    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95

    @classmethod
    def from_config(cls, config: Any) -> Bootstrap:
        """The bootstrap an :class:`~ft_assets.config.EvaluatorConfig` asks for."""
        return cls(config.bootstrap_resamples, config.bootstrap_seed, config.confidence_level)


def row_ids(rows: Sequence[Mapping[str, Any]], side: str) -> list[str]:
    """Each row's ``id`` as text (its position where a row has none); duplicates are refused."""
    ids = [str(row.get("id", index)) for index, row in enumerate(rows)]
    seen: set[str] = set()
    for index, row_id in enumerate(ids):
        if row_id in seen:
            raise ComparisonError(
                f"{side} inference results: id {row_id!r} occurs twice (again at row {index})"
            )
        seen.add(row_id)
    return ids


def failed_row_ids(
    rows: Sequence[Mapping[str, Any]], scores: MetricScores, side: str
) -> dict[str, list[str]]:
    """Per metric, the ids of the rows that did not score (NaN), in row order."""
    ids = row_ids(rows, side)
    return {
        name: [row_id for row_id, value in zip(ids, values, strict=True) if math.isnan(value)]
        for name, values in scores.per_row.items()
    }


def _interval(resampled: Any, confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return float(low), float(high)


def _resampled_means(columns: Sequence[Any], bootstrap: Bootstrap) -> list[Any]:
    """For each column (equal-length numpy arrays), its mean on each of the same bootstrap draws."""
    import numpy as np

    size = len(columns[0])
    rng = np.random.default_rng(bootstrap.seed)
    per_chunk = max(1, _INDICES_PER_CHUNK // size)
    chunks: list[list[Any]] = [[] for _ in columns]
    remaining = bootstrap.resamples
    while remaining:
        draws = min(per_chunk, remaining)
        indices = rng.integers(0, size, size=(draws, size))
        for column, out in zip(columns, chunks, strict=True):
            out.append(column[indices].mean(axis=1))
        remaining -= draws
    return [np.concatenate(parts) for parts in chunks]


def mean_interval(values: Sequence[float], bootstrap: Bootstrap) -> dict[str, float]:
    """``mean``, ``ci_low``, ``ci_high`` and ``n`` over the non-NaN ``values`` (all NaN when none)."""
    import numpy as np

    finite = np.asarray([value for value in values if not math.isnan(value)], dtype=float)
    if not finite.size:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    (means,) = _resampled_means([finite], bootstrap)
    low, high = _interval(means, bootstrap.confidence)
    return {"mean": float(finite.mean()), "ci_low": low, "ci_high": high, "n": int(finite.size)}


def paired_comparison(
    rows: Sequence[Mapping[str, Any]],
    scores: MetricScores,
    base_rows: Sequence[Mapping[str, Any]],
    base_scores: MetricScores,
    bootstrap: Bootstrap,
) -> dict[str, dict[str, Any]]:
    """Per metric scored on both sides: the paired means and delta (fine-tuned - base) with intervals.

    Each entry: ``pairs`` (rows scored on both sides), ``fine_tuned_mean``/``base_mean``/``delta`` and
    their ``_ci_low``/``_ci_high``, ``confidence``, ``resamples``, ``seed``, and ``unpaired_ids``: ids
    left out because they failed on a side or exist on one side only. With no pair every number is NaN.
    """
    import numpy as np

    ids = row_ids(rows, "fine-tuned")
    base_index = {row_id: index for index, row_id in enumerate(row_ids(base_rows, "base"))}
    comparison: dict[str, dict[str, Any]] = {}
    for name, values in scores.per_row.items():
        if name not in base_scores.per_row:
            continue
        base_values = base_scores.per_row[name]
        pairs: list[tuple[float, float]] = []
        unpaired: list[str] = []
        for row_id, value in zip(ids, values, strict=True):
            other = base_values[base_index[row_id]] if row_id in base_index else math.nan
            if math.isnan(value) or math.isnan(other):
                unpaired.append(row_id)
            else:
                pairs.append((value, other))
        unpaired += sorted(set(base_index) - set(ids))
        entry: dict[str, Any] = {
            "pairs": len(pairs),
            "confidence": bootstrap.confidence,
            "resamples": bootstrap.resamples,
            "seed": bootstrap.seed,
            "unpaired_ids": unpaired,
        }
        if pairs:
            tuned, base = (np.asarray(column, dtype=float) for column in zip(*pairs, strict=True))
            columns = {"fine_tuned": tuned, "base": base, "delta": tuned - base}
            resampled = _resampled_means(list(columns.values()), bootstrap)
            for (key, column), means in zip(columns.items(), resampled, strict=True):
                low, high = _interval(means, bootstrap.confidence)
                mean_key = key if key == "delta" else f"{key}_mean"
                entry.update({mean_key: float(column.mean()), f"{key}_ci_low": low, f"{key}_ci_high": high})
        else:
            for key in ("fine_tuned", "base", "delta"):
                mean_key = key if key == "delta" else f"{key}_mean"
                entry.update({mean_key: math.nan, f"{key}_ci_low": math.nan, f"{key}_ci_high": math.nan})
        comparison[name] = entry
    return comparison
