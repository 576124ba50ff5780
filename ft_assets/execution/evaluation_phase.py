"""The evaluation phase's body: score the fine-tuned model's answers (and the baseline's) with the configured
metrics, write the report (JSON summary + Excel workbook), log it to MLflow, and describe it
(:class:`EvaluationReport`); plus the MLflow GenAI evaluation view, recorded after the phase run closed.

The judge's ``OPENAI_API_KEY`` is read from this process's environment by the metrics
(:func:`ft_assets.phases.metrics.resolve_api_key`), never from the request.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ft_assets.asset_values import EvaluationReport, InferenceResults
from ft_assets.config import Settings
from ft_assets.execution.request import PhaseOutcome, PhaseRequest, pipes_meta
from ft_assets.phases.io import write_json
from ft_assets.tracking_options import LogSink
from ft_assets.tracking_run import PhaseRun

if TYPE_CHECKING:
    from ft_assets.phases.metrics import MetricScores

#: Per-row scores and errors of both sides, beside the report (read back for the GenAI evaluation view).
ROW_SCORES_FILE = "row_scores.json"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file written by the inference phase."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the inference results this report scores are gone (deleted after their run?); "
            "materialize the inference assets again"
        )
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _row_scores(scores: MetricScores | None) -> dict[str, Any] | None:
    # NaN (a row that failed) as null: strict JSON, and the error says why
    if scores is None:
        return None
    per_row = {
        name: [None if math.isnan(v) else v for v in values] for name, values in scores.per_row.items()
    }
    return {"per_row": per_row, "errors": scores.errors}


def load_row_scores(path: str | Path) -> tuple[MetricScores, MetricScores | None]:
    """The fine-tuned and base per-row scores the evaluation phase wrote to ``path``."""
    from ft_assets.phases.metrics import MetricScores

    document = json.loads(Path(path).read_text(encoding="utf-8"))

    def scores(side: dict[str, Any]) -> MetricScores:
        per_row = {
            name: [math.nan if v is None else float(v) for v in values]
            for name, values in side["per_row"].items()
        }
        return MetricScores(per_row=per_row, errors=side["errors"])

    base = document["base"]
    return scores(document["fine_tuned"]), scores(base) if base is not None else None


def evaluate(request: PhaseRequest, settings: Settings, run: PhaseRun, log: LogSink) -> PhaseOutcome:
    """Score the request's inference results against the base model's and write the report; the value is
    an :class:`EvaluationReport`."""
    from ft_assets.phases.comparison import Bootstrap
    from ft_assets.phases.metric_definitions import corpus_scores, describe_metrics
    from ft_assets.phases.metrics import score_rows
    from ft_assets.phases.report_mlflow import (
        PER_SAMPLE_TABLE,
        definition_params,
        evaluation_metrics,
        per_sample_table,
    )
    from ft_assets.phases.reports import write_report

    inference, baseline = request.inference_results()
    config = settings.evaluator
    rows = read_jsonl(inference.path)
    baseline_rows = read_jsonl(baseline.path) if baseline else None
    started = time.perf_counter()
    scores = score_rows(rows, config)
    baseline_scores = score_rows(baseline_rows, config) if baseline_rows else None
    durations = {"scoring_s": time.perf_counter() - started}
    provenance = {
        "fine_tuned_model": inference.model_hash,
        "base_model": baseline.model_hash if baseline else None,
        "test_dataset": inference.dataset_hash,
        "dagster_run_id": request.dagster_run_id,
        "mlflow_run_id": run.run_id,
    }
    report = write_report(
        Path(request.output),
        rows=rows,
        scores=scores,
        baseline_rows=baseline_rows,
        baseline_scores=baseline_scores,
        primary_metric=config.primary_metric,
        provenance=provenance,
        durations_s=durations,
        bootstrap=Bootstrap.from_config(config),
        definitions=describe_metrics(config, rows),
        corpus_scores={
            "fine_tuned": corpus_scores(rows, config),
            "base": corpus_scores(baseline_rows, config) if baseline_rows else None,
        },
    )
    # after write_report, which replaces the folder as a whole
    row_scores = write_json(
        Path(request.output) / ROW_SCORES_FILE,
        {"fine_tuned": _row_scores(scores), "base": _row_scores(baseline_scores)},
    )
    document = report.document
    eval_metrics = evaluation_metrics(document)
    usage = scores.judge_usage
    eval_metrics.update(
        {
            "judge_input_tokens": usage.input_tokens,
            "judge_output_tokens": usage.output_tokens,
            "judge_cost_usd": usage.cost_usd,
        }
    )
    run.log_params(definition_params(document))
    run.log_metrics(eval_metrics)
    run.log_parent_metrics(eval_metrics)
    run.log_artifact(report.json_path)
    run.log_artifact(report.xlsx_path)
    run.log_table(per_sample_table(rows, scores, baseline_rows, baseline_scores), PER_SAMPLE_TABLE)
    log.info(f"scored {len(rows)} rows in {durations['scoring_s']:.1f} s: {report.json_path}")
    value = EvaluationReport(
        json_path=str(report.json_path),
        xlsx_path=str(report.xlsx_path),
        summary=document["metrics"]["fine_tuned"],
        base_summary=document["metrics"]["base"] or {},
        comparison=document["comparison"],
        failed_rows=document["failed_rows"]["fine_tuned"],
        primary_metric=config.primary_metric,
        rows=len(rows),
        model_hash=inference.model_hash,
        inference=inference.counts(),
        row_scores_path=str(row_scores),
    )
    metadata = {
        "summary_json": pipes_meta(str(report.json_path), "path"),
        "workbook": pipes_meta(str(report.xlsx_path), "path"),
        "preview": pipes_meta(report.markdown, "md"),
        **{
            name: pipes_meta(float(v), "float")
            for name, v in eval_metrics.items()
            if name.startswith("eval_")
        },
    }
    return PhaseOutcome(value, metadata)


def record_evaluation_view(
    report: EvaluationReport,
    inference: InferenceResults,
    baseline: InferenceResults | None,
    *,
    tracking_uri: str,
    run_id: str,
) -> dict[str, float]:
    """The report's rows and scores as an MLflow GenAI evaluation on the (closed) phase run ``run_id``
    (:func:`ft_assets.phases.mlflow_evaluation.log_genai_evaluation`, which says why it runs after the
    phase run closed); returns the metrics MLflow computed."""
    from ft_assets.phases.mlflow_evaluation import log_genai_evaluation

    scores, baseline_scores = load_row_scores(report.row_scores_path)
    rows = read_jsonl(inference.path)
    baseline_rows = read_jsonl(baseline.path) if baseline else None
    return log_genai_evaluation(tracking_uri, run_id, rows, scores, baseline_rows, baseline_scores)
