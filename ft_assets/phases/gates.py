"""Release gates over an evaluation report: thresholds, not-worse-than-base, completeness, lineage.

Shared by the Dagster asset checks and the model promotion, so both apply exactly the same rules:

- thresholds: every ``[evaluator.thresholds]`` metric scored on at least ``min_scored_share`` of the
  rows (the failed rows are listed by id) *and* its mean over the scored rows is at or above the minimum;
- not worse than base: the lower end of the paired bootstrap interval of the primary metric's delta
  (fine-tuned - base, over the rows scored on both sides) is at least ``-not_worse_margin``;
- completeness: one inference row per test example, empty responses under the allowed share;
- lineage: the model to promote is the one whose inference the report scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ft_assets.errors import FtAssetsError

if TYPE_CHECKING:
    from ft_assets.asset_values import EvaluationReport
    from ft_assets.config import Settings

#: Failed row ids listed in a gate's details (the rest are counted).
_LISTED_IDS = 20


class LineageError(FtAssetsError, ValueError):
    """The model offered for promotion is not the one whose inference the evaluation report scored."""


@dataclass(frozen=True)
class GateResult:
    """Whether a gate passed, and the numbers it looked at."""

    passed: bool
    details: dict[str, Any] = field(default_factory=dict)


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _listed(ids: Sequence[str]) -> list[str]:
    return list(ids[:_LISTED_IDS]) + (
        [f"... and {len(ids) - _LISTED_IDS} more"] if len(ids) > _LISTED_IDS else []
    )


def threshold_gate(
    summary: Mapping[str, Mapping[str, float]],
    thresholds: Mapping[str, float],
    *,
    failed_ids: Mapping[str, Sequence[str]],
    min_scored_share: float,
) -> GateResult:
    """Every metric in ``thresholds`` scored on at least ``min_scored_share`` of its rows and has a mean
    (over the scored rows) at or above its minimum; a missing metric or a NaN mean fails."""
    means: dict[str, float | None] = {}
    scored_share: dict[str, float] = {}
    failing: list[str] = []
    for name, minimum in sorted(thresholds.items()):
        stats = summary.get(name, {})
        means[name] = stats.get("mean")
        rows = int(stats.get("count", 0)) + int(stats.get("nan_count", 0))
        scored_share[name] = int(stats.get("count", 0)) / rows if rows else 0.0
        if _missing(means[name]) or means[name] < minimum or scored_share[name] < min_scored_share:
            failing.append(name)
    failed_rows = {name: _listed(failed_ids.get(name, [])) for name in thresholds if failed_ids.get(name)}
    return GateResult(
        not failing,
        {
            "thresholds": dict(thresholds),
            "means": means,
            "scored_share": scored_share,
            "min_scored_share": min_scored_share,
            "failed_rows": failed_rows,
            "failing": failing,
        },
    )


def not_worse_gate(
    comparison: Mapping[str, Mapping[str, Any]] | None, primary_metric: str, *, margin: float
) -> GateResult:
    """Passes when the paired delta's interval lies above ``-margin`` (``delta_ci_low >= -margin``), or
    when no baseline ran. No pair scored on both sides fails."""
    if comparison is None:
        return GateResult(True, {"primary_metric": primary_metric, "note": "no baseline was run"})
    entry = comparison.get(primary_metric, {})
    low = entry.get("delta_ci_low")
    passed = not _missing(low) and low >= -margin
    keys = ("pairs", "fine_tuned_mean", "base_mean", "delta", "delta_ci_low", "delta_ci_high", "confidence")
    return GateResult(
        passed,
        {
            "primary_metric": primary_metric,
            "margin": margin,
            "rule": f"passes when delta_ci_low >= -{margin}",
            **{key: entry.get(key) for key in keys},
        },
    )


def completeness_gate(
    rows: int, expected_rows: int, empty_responses: int, max_empty_share: float
) -> GateResult:
    """One output row per test example, and empty responses under the allowed share."""
    empty_share = empty_responses / rows if rows else 1.0
    passed = rows == expected_rows and empty_share <= max_empty_share
    return GateResult(
        passed,
        {
            "rows": rows,
            "expected_rows": expected_rows,
            "empty_share": empty_share,
            "allowed": max_empty_share,
        },
    )


def check_lineage(model_hash: str | None, evaluated_model_hash: str | None) -> None:
    """Refuse (:class:`LineageError`) unless the model to promote is the one the report evaluated."""
    if not model_hash or model_hash != evaluated_model_hash:
        raise LineageError(
            f"refusing to register fine_tuned_model {model_hash}: the evaluation report scored the "
            f"inference of model {evaluated_model_hash}; materialize inference_results and "
            "evaluation_report for this model first (the whole chain, or inference_job + evaluation_job)"
        )


def release_gates(settings: Settings, evaluation_report: EvaluationReport) -> dict[str, GateResult]:
    """The gates promotion requires, by asset check name, over the ``evaluation_report`` asset's value
    (the asset checks apply the same functions)."""
    evaluator, inferencer = settings.evaluator, settings.inferencer
    inference = evaluation_report.inference
    return {
        "metric_thresholds": threshold_gate(
            evaluation_report.summary,
            evaluator.thresholds,
            failed_ids=evaluation_report.failed_rows,
            min_scored_share=evaluator.min_scored_share,
        ),
        "not_worse_than_base": not_worse_gate(
            evaluation_report.comparison,
            evaluation_report.primary_metric,
            margin=evaluator.not_worse_margin,
        ),
        "inference_complete": completeness_gate(
            inference.rows,
            inference.expected_rows,
            inference.empty_responses,
            inferencer.max_empty_response_share,
        ),
    }
