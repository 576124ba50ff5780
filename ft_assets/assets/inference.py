"""Inference assets: batched generation on the held-out test split, for the fine-tuned and the base model."""

from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.assets.common import PHASE_CODE_VERSION, hf_token, run_output_dir
from ft_assets.assets.data import evaluation_dataset
from ft_assets.config import Settings
from ft_assets.phases.models import ResolvedModel
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking

INFERENCE_FILE = "inference_results.jsonl"


def _run_inference(
    context: dg.AssetExecutionContext,
    resolved: Settings,
    mlflow: MlflowTracking,
    *,
    asset_name: str,
    phase: str,
    model_dir: Path,
    model_hash: str,
) -> dg.Output[dict[str, Any]]:
    from ft_assets.phases.generation import generate, load_test_data

    output = run_output_dir(resolved, asset_name, context) / INFERENCE_FILE
    with mlflow.phase_run(context, phase, resolved) as run:
        dataset = load_test_data(resolved.inferencer, resolved.base_dir, hf_token())
        run.log_dataset("test", dataset.content_hash, dataset.resolved, "testing")
        result = generate(model_dir, dataset, resolved.inferencer, output)
        run.log_metrics(result.metrics)
        run.log_params({"backend": result.backend, "device": result.device.device, "model_hash": model_hash})
        run.log_artifact(output)
        metadata = run.dagster_metadata()
    value = {
        "path": str(output),
        "rows": result.rows,
        "expected_rows": len(dataset.examples),
        "empty_responses": result.empty_responses,
        "model_hash": model_hash,
        "dataset_hash": dataset.content_hash,
        "metrics": result.metrics,
    }
    return dg.Output(
        value,
        metadata={
            **metadata,
            "path": dg.MetadataValue.path(str(output)),
            "rows": result.rows,
            "rows_per_s": result.metrics["rows_per_s"],
            "generated_tokens_per_s": result.metrics["generated_tokens_per_s"],
            "empty_responses": result.empty_responses,
            "finish_reasons": dg.MetadataValue.json(result.finish_reasons),
            "device": f"{result.device.device} ({result.device.dtype})",
        },
    )


@dg.asset(
    group_name="inference",
    deps=[evaluation_dataset],
    kinds={"pytorch", "huggingface", "mlflow"},
    code_version=PHASE_CODE_VERSION,
    pool="gpu",
)
def inference_results(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    fine_tuned_model: dict[str, Any],
) -> dg.Output[dict[str, Any]]:
    """JSONL of the fine-tuned model's answers on the test split (seed fields + id, token counts, finish reason)."""
    resolved = settings.load()
    model_dir = Path(fine_tuned_model.get("merged_path") or fine_tuned_model["path"])
    return _run_inference(
        context,
        resolved,
        mlflow,
        asset_name="inference_results",
        phase="inference",
        model_dir=model_dir,
        model_hash=fine_tuned_model["fingerprint"],
    )


@dg.asset(
    group_name="inference",
    deps=[evaluation_dataset],
    kinds={"pytorch", "huggingface", "mlflow"},
    code_version=PHASE_CODE_VERSION,
    pool="gpu",
)
def base_inference_results(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    base_model: ResolvedModel,
) -> dg.Output[dict[str, Any] | None]:
    """The same inference on the base model: the baseline every report compares against.

    With ``[inferencer] run_baseline = false`` it records that no baseline was run.
    """
    resolved = settings.load()
    if not resolved.inferencer.run_baseline:
        context.log.info("[inferencer] run_baseline = false: no baseline inference")
        return dg.Output(None, metadata={"skipped": "run_baseline = false"})
    return _run_inference(
        context,
        resolved,
        mlflow,
        asset_name="base_inference_results",
        phase="baseline_inference",
        model_dir=base_model.path,
        model_hash=base_model.content_hash,
    )
