"""Model assets: the resolved base model and the fine-tuned adapter (LoRA/QLoRA via TRL + PEFT)."""

import dagster as dg

from ft_assets.asset_values import FineTunedModel
from ft_assets.assets.common import PHASE_CODE_VERSION, preflight_run, run_output_dir
from ft_assets.assets.data import training_dataset, validation_dataset
from ft_assets.execution.launcher import GPU_STEP_TAGS, ComputeLauncher
from ft_assets.execution.recovery import record_orchestrator
from ft_assets.execution.request import PhaseRequest
from ft_assets.phases.models import ResolvedModel
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking
from ft_assets.secrets import hf_token


@dg.asset(
    group_name="models",
    kinds={"huggingface", "pytorch"},
    code_version=PHASE_CODE_VERSION,
    owners=["team:ml-platform"],
)
def base_model(
    context: dg.AssetExecutionContext, settings: PipelineSettings, mlflow: MlflowTracking
) -> dg.Output[ResolvedModel]:
    """The base model as a local transformers directory: the embedded SmolLM2 (converted once from its GGUF
    and cached), the embedded tiny test model, a local path, or a hub id.

    As the first step of a run, it preflights every phase of the run before anything is downloaded or
    converted."""
    from ft_assets.phases.models import resolve_base_model

    resolved = settings.load()
    preflight_run(context, resolved, mlflow)
    model = resolve_base_model(
        resolved.fine_tuner.base_model_id,
        cache_dir=resolved.model_cache_dir,
        base_dir=resolved.base_dir,
        token=hf_token(),
    )
    context.log.info(f"base model {model.model_id} at {model.path} ({model.content_hash})")
    return dg.Output(
        model,
        data_version=dg.DataVersion(model.content_hash),
        metadata={
            "model_id": model.model_id,
            # not "path": the IO manager writes its own pickle's path under that key
            "model_path": dg.MetadataValue.path(str(model.path)),
            "content_hash": model.content_hash,
            "source": model.source,
        },
    )


def train_fine_tuned_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    launcher: ComputeLauncher,
    base_model: ResolvedModel,
) -> dg.Output[FineTunedModel]:
    """LoRA adapter (or full model) + tokenizer + chat template + metadata, trained with TRL's SFTTrainer
    where the ``launcher`` resource says (this process, a subprocess, several under accelerate/torchrun,
    or a Kubernetes pod).

    Resumes from the newest checkpoint when base model, data and training config are unchanged.

    A sweep candidate runs this same step with its own settings (:mod:`ft_assets.sweeps.assets`).
    """
    record_orchestrator(context)
    resolved = settings.load()
    preflight_run(context, resolved, mlflow)
    request = PhaseRequest.finetuning(
        resolved,
        base_model,
        run_output_dir(resolved, "fine_tuned_model", context),
        tracking_required=mlflow.options(resolved).required,
    )
    with mlflow.phase_run(context, "finetuning", resolved) as run:
        result = launcher.run_phase(context, request, run)
        tracking = run.dagster_metadata()
    return result.output(tracking)


fine_tuned_model = dg.asset(
    name="fine_tuned_model",
    group_name="models",
    deps=[training_dataset, validation_dataset],
    kinds={"pytorch", "huggingface", "mlflow"},
    code_version=PHASE_CODE_VERSION,
    pool="gpu",
    op_tags=GPU_STEP_TAGS,
    owners=["team:ml-platform"],
)(train_fine_tuned_model)
