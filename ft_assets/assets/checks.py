"""Asset checks that gate a release: metric thresholds, not-worse-than-base, inference completeness."""

import math
from typing import Any

import dagster as dg

from ft_assets.assets.evaluation import evaluation_report
from ft_assets.assets.inference import inference_results
from ft_assets.resources.settings import PipelineSettings


def _severity(settings: PipelineSettings) -> dg.AssetCheckSeverity:
    # ERROR stops downstream assets of a blocking check; WARN only reports.
    return (
        dg.AssetCheckSeverity.ERROR
        if settings.load().evaluator.blocking_checks
        else dg.AssetCheckSeverity.WARN
    )


@dg.asset_check(
    asset=evaluation_report, blocking=True, description="Every [evaluator.thresholds] metric is met."
)
def metric_thresholds(settings: PipelineSettings, evaluation_report: dict[str, Any]) -> dg.AssetCheckResult:
    thresholds = settings.load().evaluator.thresholds
    means = {name: evaluation_report["summary"][name]["mean"] for name in thresholds}
    failing = {
        name: mean
        for name, mean in means.items()
        if mean is None or math.isnan(mean) or mean < thresholds[name]
    }
    return dg.AssetCheckResult(
        passed=not failing,
        severity=_severity(settings),
        metadata={"thresholds": thresholds, "means": means, "failing": list(failing)},
    )


@dg.asset_check(
    asset=evaluation_report, blocking=True, description="Fine-tuned is not worse than base (primary metric)."
)
def not_worse_than_base(settings: PipelineSettings, evaluation_report: dict[str, Any]) -> dg.AssetCheckResult:
    primary = evaluation_report["primary_metric"]
    tuned = evaluation_report["summary"][primary]["mean"]
    base_summary = evaluation_report["base_summary"]
    if not base_summary:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no baseline was run"})
    base = base_summary[primary]["mean"]
    passed = tuned is not None and base is not None and tuned >= base
    return dg.AssetCheckResult(
        passed=passed,
        severity=_severity(settings),
        metadata={
            "primary_metric": primary,
            "fine_tuned": tuned,
            "base": base,
            "delta": (tuned or 0) - (base or 0),
        },
    )


@dg.asset_check(
    asset=inference_results, description="One row per test example; empty responses under the limit."
)
def inference_complete(settings: PipelineSettings, inference_results: dict[str, Any]) -> dg.AssetCheckResult:
    allowed = settings.load().inferencer.max_empty_response_share
    rows, expected = inference_results["rows"], inference_results["expected_rows"]
    empty_share = inference_results["empty_responses"] / rows if rows else 1.0
    return dg.AssetCheckResult(
        passed=rows == expected and empty_share <= allowed,
        metadata={"rows": rows, "expected_rows": expected, "empty_share": empty_share, "allowed": allowed},
    )
