"""The evaluation report asset: ragas metrics for the fine-tuned model and the baseline, as JSON + Excel."""

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.assets.common import PHASE_CODE_VERSION, run_output_dir, secret
from ft_assets.assets.data import evaluation_dataset
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file written by the inference phase."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dg.asset(
    group_name="evaluation",
    deps=[evaluation_dataset],
    kinds={"mlflow", "excel", "json"},
    code_version=PHASE_CODE_VERSION,
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    inference_results: dict[str, Any],
    base_inference_results: dict[str, Any] | None,
) -> dg.Output[dict[str, Any]]:
    """Scores (offline ragas metrics by default, LLM judges when configured) for fine-tuned vs base, with a
    JSON summary and an Excel workbook (Summary, Per-sample, Comparison, chart)."""
    from ft_assets.phases.metrics import preflight, score_rows, summarize
    from ft_assets.phases.reports import write_report

    resolved = settings.load()
    config = resolved.evaluator
    api_key = secret("OPENAI_API_KEY")
    rows = read_jsonl(inference_results["path"])
    baseline_rows = read_jsonl(base_inference_results["path"]) if base_inference_results else None
    preflight(
        config,
        api_key=api_key,
        has_ground_truth=all(r.get("ground_truth") for r in rows),
        has_contexts=all(r.get("contexts") for r in rows),
    )
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
        )
        summary = summarize(scores)
        base_summary = summarize(baseline_scores) if baseline_scores else {}
        eval_metrics = {f"eval_{name}": stats["mean"] for name, stats in summary.items()}
        eval_metrics.update({f"eval_base_{name}": stats["mean"] for name, stats in base_summary.items()})
        usage = scores.judge_usage
        eval_metrics.update(
            {
                "judge_input_tokens": usage.input_tokens,
                "judge_output_tokens": usage.output_tokens,
                "judge_cost_usd": usage.cost_usd,
            }
        )
        run.log_metrics(eval_metrics)
        run.log_parent_metrics(eval_metrics)
        run.log_artifact(report.json_path)
        run.log_artifact(report.xlsx_path)
        metadata = run.dagster_metadata()
    value = {
        "json_path": str(report.json_path),
        "xlsx_path": str(report.xlsx_path),
        "summary": summary,
        "base_summary": base_summary,
        "primary_metric": config.primary_metric,
        "rows": len(rows),
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
