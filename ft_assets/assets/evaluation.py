"""The evaluation report asset: ragas metrics for the fine-tuned model and the baseline, as JSON + Excel."""

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.assets.common import PHASE_CODE_VERSION, preflight_run, run_output_dir, secret
from ft_assets.assets.data import testing_dataset
from ft_assets.phases.gates import check_lineage, release_gates
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking
from ft_assets.secrets import redact


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


def score_inference(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    inference_results: dict[str, Any],
    base_inference_results: dict[str, Any] | None,
) -> dg.Output[dict[str, Any]]:
    """Scores (offline ragas metrics by default, LLM judges when configured) for fine-tuned vs base, with
    bootstrap intervals for every mean and paired delta, each metric's definition and corpus-level score:
    a JSON summary, an Excel workbook (Summary, Per-sample, Comparison, chart), MLflow metrics/params and
    a per-sample MLflow table.

    A sweep candidate runs this same step with its own settings (:mod:`ft_assets.sweeps.assets`).
    """
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

    resolved = settings.load()
    preflight_run(context, resolved, mlflow)
    config = resolved.evaluator
    api_key = secret("OPENAI_API_KEY")
    rows = read_jsonl(inference_results["path"])
    baseline_rows = read_jsonl(base_inference_results["path"]) if base_inference_results else None
    with mlflow.phase_run(context, "evaluation", resolved) as run:
        started = time.perf_counter()
        scores = score_rows(rows, config, api_key=api_key)
        baseline_scores = score_rows(baseline_rows, config, api_key=api_key) if baseline_rows else None
        durations = {"scoring_s": time.perf_counter() - started}
        provenance = {
            "fine_tuned_model": inference_results["model_hash"],
            "base_model": base_inference_results["model_hash"] if base_inference_results else None,
            "test_dataset": inference_results["dataset_hash"],
            "dagster_run_id": context.run.run_id,
            "mlflow_run_id": run.run_id,
        }
        report = write_report(
            run_output_dir(resolved, "evaluation_report", context),
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
        metadata = run.dagster_metadata()
    if config.log_mlflow_evaluation and run.enabled:
        from ft_assets.phases.mlflow_evaluation import log_genai_evaluation

        try:  # after the phase run closed: see log_genai_evaluation
            log_genai_evaluation(
                str(run.tracking_uri), str(run.run_id), rows, scores, baseline_rows, baseline_scores
            )
        except Exception as error:  # a view of what is already logged: its loss must not fail the report
            context.log.warning(f"MLflow GenAI evaluation view not recorded: {redact(str(error))}")
    value = {
        "json_path": str(report.json_path),
        "xlsx_path": str(report.xlsx_path),
        "summary": document["metrics"]["fine_tuned"],
        "base_summary": document["metrics"]["base"] or {},
        "comparison": document["comparison"],
        "failed_rows": document["failed_rows"]["fine_tuned"],
        "primary_metric": config.primary_metric,
        "rows": len(rows),
        # what promotion checks: the model whose inference was scored, and that inference's completeness
        "model_hash": inference_results["model_hash"],
        "inference": {
            key: inference_results.get(key) for key in ("rows", "expected_rows", "empty_responses")
        },
    }
    return dg.Output(
        value,
        metadata={
            **metadata,
            "summary_json": dg.MetadataValue.path(str(report.json_path)),
            "workbook": dg.MetadataValue.path(str(report.xlsx_path)),
            "preview": dg.MetadataValue.md(report.markdown),
            **{name: float(v) for name, v in eval_metrics.items() if name.startswith("eval_")},
        },
    )


evaluation_report = dg.asset(
    name="evaluation_report",
    group_name="evaluation",
    deps=[testing_dataset],
    kinds={"mlflow", "excel", "json"},
    code_version=PHASE_CODE_VERSION,
    owners=["team:ml-platform"],
)(score_inference)


def promote_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    fine_tuned_model: dict[str, Any],
    evaluation_report: dict[str, Any],
) -> dg.Output[dict[str, Any]]:
    """Registers the fine-tuned model in the MLflow model registry and points ``registry_alias`` at it, when
    ``register_model = true``, the report scored this very model's inference (else it refuses, naming both
    fingerprints) and the release gates (thresholds, not worse than base, inference complete) pass.

    A sweep candidate runs this same step with its own settings (:mod:`ft_assets.sweeps.assets`).
    """
    resolved = settings.load()
    config = resolved.evaluator
    if not config.register_model:
        return dg.Output({"registered": False}, metadata={"skipped": "[evaluator] register_model = false"})
    check_lineage(fine_tuned_model.get("fingerprint"), evaluation_report.get("model_hash"))
    gates = release_gates(resolved, evaluation_report)
    failed = [name for name, gate in gates.items() if not gate.passed]
    if failed:
        context.log.warning(f"not promoting: gates failed: {', '.join(failed)}")
        return dg.Output(
            {"registered": False, "failed_gates": failed}, metadata={"failed_gates": ", ".join(failed)}
        )
    model_uri = fine_tuned_model.get("mlflow_model_uri")
    if not model_uri:
        raise ValueError(
            "[evaluator] register_model = true needs the model logged to MLflow ([mlflow] log_model = true)"
        )
    with mlflow.phase_run(context, "promotion", resolved) as run:
        version = run.register_model(model_uri, config.registered_model_name, config.registry_alias)
        run.set_tags({"registered_model": config.registered_model_name, "registered_version": str(version)})
        metadata = run.dagster_metadata()
    value = {
        "registered": True,
        "name": config.registered_model_name,
        "version": str(version),
        "alias": config.registry_alias,
    }
    return dg.Output(value, metadata={**metadata, **value})


promoted_model = dg.asset(
    name="promoted_model",
    group_name="evaluation",
    kinds={"mlflow"},
    code_version=PHASE_CODE_VERSION,
    owners=["team:ml-platform"],
)(promote_model)
