"""Release gates over an evaluation summary: metric thresholds and not-worse-than-base.

Shared by the Dagster asset checks and the model promotion, so both apply exactly the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GateResult:
    """Whether a gate passed, and the numbers it looked at."""

    passed: bool
    details: dict[str, Any] = field(default_factory=dict)


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def threshold_gate(summary: Mapping[str, Mapping[str, float]], thresholds: Mapping[str, float]) -> GateResult:
    """Every metric in ``thresholds`` has a mean at or above its minimum (a NaN/missing mean fails)."""
    means = {name: summary.get(name, {}).get("mean") for name in thresholds}
    failing = sorted(name for name, mean in means.items() if _missing(mean) or mean < thresholds[name])
    return GateResult(not failing, {"thresholds": dict(thresholds), "means": means, "failing": failing})


def not_worse_gate(
    summary: Mapping[str, Mapping[str, float]],
    base_summary: Mapping[str, Mapping[str, float]] | None,
    primary_metric: str,
) -> GateResult:
    """The fine-tuned mean of ``primary_metric`` is at least the base model's (passes when no baseline ran)."""
    if not base_summary:
        return GateResult(True, {"primary_metric": primary_metric, "note": "no baseline was run"})
    tuned = summary.get(primary_metric, {}).get("mean")
    base = base_summary.get(primary_metric, {}).get("mean")
    passed = not _missing(tuned) and not _missing(base) and tuned >= base
    delta = None if _missing(tuned) or _missing(base) else tuned - base
    return GateResult(
        passed, {"primary_metric": primary_metric, "fine_tuned": tuned, "base": base, "delta": delta}
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
