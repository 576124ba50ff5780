"""Asset checks that gate a release: metric thresholds, not-worse-than-base, inference completeness."""

from typing import Any

import dagster as dg

from ft_assets.assets.evaluation import evaluation_report
from ft_assets.assets.inference import inference_results
from ft_assets.phases.gates import GateResult, completeness_gate, not_worse_gate, threshold_gate
from ft_assets.resources.settings import PipelineSettings


def _result(gate: GateResult, settings: PipelineSettings) -> dg.AssetCheckResult:
    # ERROR stops the assets downstream of a blocking check (model promotion); WARN only reports.
    blocking = settings.load().evaluator.blocking_checks
    return dg.AssetCheckResult(
        passed=gate.passed,
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        metadata={
            key: dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
            for key, value in gate.details.items()
            if value is not None
        },
    )


@dg.asset_check(
    asset=evaluation_report, blocking=True, description="Every [evaluator.thresholds] metric is met."
)
def metric_thresholds(settings: PipelineSettings, evaluation_report: dict[str, Any]) -> dg.AssetCheckResult:
    """Fails when any configured threshold is not met; blocks promotion when ``blocking_checks`` is set."""
    gate = threshold_gate(evaluation_report["summary"], settings.load().evaluator.thresholds)
    return _result(gate, settings)


@dg.asset_check(
    asset=evaluation_report, blocking=True, description="Fine-tuned is not worse than base (primary metric)."
)
def not_worse_than_base(settings: PipelineSettings, evaluation_report: dict[str, Any]) -> dg.AssetCheckResult:
    """Fails when the fine-tuned model scores below the base model on the primary metric."""
    gate = not_worse_gate(
        evaluation_report["summary"], evaluation_report["base_summary"], evaluation_report["primary_metric"]
    )
    return _result(gate, settings)


@dg.asset_check(
    asset=inference_results, description="One row per test example; empty responses under the limit."
)
def inference_complete(settings: PipelineSettings, inference_results: dict[str, Any]) -> dg.AssetCheckResult:
    """Fails when rows are missing or too many responses are empty."""
    gate = completeness_gate(
        inference_results["rows"],
        inference_results["expected_rows"],
        inference_results["empty_responses"],
        settings.load().inferencer.max_empty_response_share,
    )
    return _result(gate, settings)
