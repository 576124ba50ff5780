"""Inference assets: batched generation on the held-out test split, for the fine-tuned and the base model,
computed where the ``launcher`` resource says."""

from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.asset_values import FineTunedModel, InferenceResults
from ft_assets.assets.common import PHASE_CODE_VERSION, preflight_run, run_output_dir
from ft_assets.assets.data import testing_dataset
from ft_assets.config import Settings
from ft_assets.execution.launcher import GPU_STEP_TAGS, ComputeLauncher
from ft_assets.execution.recovery import record_orchestrator
from ft_assets.execution.request import PhaseRequest
from ft_assets.phases.models import ResolvedModel
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking

INFERENCE_FILE = "inference_results.jsonl"


def _run_inference(
    context: dg.AssetExecutionContext,
    resolved: Settings,
    mlflow: MlflowTracking,
    launcher: ComputeLauncher,
    *,
    asset_name: str,
    phase: str,
    model_dir: Path,
    model_hash: str,
) -> dg.Output[InferenceResults]:
    record_orchestrator(context)
    preflight_run(context, resolved, mlflow)
    request = PhaseRequest.inference(
        phase,
        resolved,
        model_dir=model_dir,
        model_hash=model_hash,
        output_path=run_output_dir(resolved, asset_name, context) / INFERENCE_FILE,
        tracking_required=mlflow.options(resolved).required,
    )
    with mlflow.phase_run(context, phase, resolved) as run:
        result = launcher.run_phase(context, request, run)
        tracking = run.dagster_metadata()
    return result.output(tracking)


#: Both inference assets: same group, inputs, kinds and GPU pool.
_INFERENCE_ASSET: dict[str, Any] = {
    "group_name": "inference",
    "deps": [testing_dataset],
    "kinds": {"pytorch", "huggingface", "mlflow"},
    "code_version": PHASE_CODE_VERSION,
    "pool": "gpu",
    "op_tags": GPU_STEP_TAGS,
    "owners": ["team:ml-platform"],
}


def infer_fine_tuned_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    launcher: ComputeLauncher,
    fine_tuned_model: FineTunedModel,
) -> dg.Output[InferenceResults]:
    """JSONL of the fine-tuned model's answers on the test split (seed fields + id, token counts, finish reason).

    A sweep candidate runs this same step with its own settings (:mod:`ft_assets.sweeps.assets`).
    """
    resolved = settings.load()
    return _run_inference(
        context,
        resolved,
        mlflow,
        launcher,
        asset_name="inference_results",
        phase="inference",
        model_dir=fine_tuned_model.model_dir,
        model_hash=fine_tuned_model.fingerprint,
    )


inference_results = dg.asset(name="inference_results", **_INFERENCE_ASSET)(infer_fine_tuned_model)


@dg.asset(**_INFERENCE_ASSET)
def base_inference_results(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    launcher: ComputeLauncher,
    base_model: ResolvedModel,
) -> dg.Output[InferenceResults | None]:
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
        launcher,
        asset_name="base_inference_results",
        phase="baseline_inference",
        model_dir=base_model.path,
        model_hash=base_model.content_hash,
    )
