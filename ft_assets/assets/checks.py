"""Asset checks that gate a release: metric thresholds, not-worse-than-base, inference completeness.

With ``[evaluator] blocking_checks = true`` each failure has ERROR severity and stops the assets
downstream in the same run; promotion re-applies the same gates (:func:`release_gates`) in any case.
"""

import dagster as dg

from ft_assets.asset_values import EvaluationReport, InferenceResults
from ft_assets.assets.evaluation import evaluation_report
from ft_assets.assets.inference import inference_results
from ft_assets.config import Settings
from ft_assets.phases.gates import GateResult, completeness_gate, release_gates
from ft_assets.resources.settings import PipelineSettings


def _result(gate: GateResult, settings: Settings) -> dg.AssetCheckResult:
    # ERROR stops the assets downstream of a blocking check (model promotion); WARN only reports.
    return dg.AssetCheckResult(
        passed=gate.passed,
        severity=dg.AssetCheckSeverity.ERROR
        if settings.evaluator.blocking_checks
        else dg.AssetCheckSeverity.WARN,
        metadata={
            key: dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
            for key, value in gate.details.items()
            if value is not None
        },
    )


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="Every [evaluator.thresholds] metric is met, on at least min_scored_share of the rows.",
)
def metric_thresholds(settings: PipelineSettings, evaluation_report: EvaluationReport) -> dg.AssetCheckResult:
    """Fails when a threshold is not met or too many rows failed to score (their ids are listed); blocks
    promotion when ``blocking_checks`` is set."""
    resolved = settings.load()
    return _result(release_gates(resolved, evaluation_report)["metric_thresholds"], resolved)


@dg.asset_check(
    asset=evaluation_report,
    blocking=True,
    description="The paired delta's interval (primary metric) lies above -not_worse_margin.",
)
def not_worse_than_base(
    settings: PipelineSettings, evaluation_report: EvaluationReport
) -> dg.AssetCheckResult:
    """Fails when the lower end of the fine-tuned - base interval is below ``-not_worse_margin``."""
    resolved = settings.load()
    return _result(release_gates(resolved, evaluation_report)["not_worse_than_base"], resolved)


@dg.asset_check(
    asset=inference_results,
    blocking=True,
    description="One row per test example; empty responses under the limit.",
)
def inference_complete(
    settings: PipelineSettings, inference_results: InferenceResults
) -> dg.AssetCheckResult:
    """Fails when rows are missing or too many responses are empty; with ``blocking_checks`` the report
    and promotion downstream do not run."""
    resolved = settings.load()
    gate = completeness_gate(
        inference_results.rows,
        inference_results.expected_rows,
        inference_results.empty_responses,
        resolved.inferencer.max_empty_response_share,
    )
    return _result(gate, resolved)
