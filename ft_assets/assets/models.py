"""Model assets: the resolved base model and the fine-tuned adapter (LoRA/QLoRA via TRL + PEFT)."""

from typing import Any

import dagster as dg

from ft_assets.assets.common import PHASE_CODE_VERSION, hf_token, run_output_dir
from ft_assets.assets.data import training_dataset, validation_dataset
from ft_assets.phases.models import ResolvedModel
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking


@dg.asset(
    group_name="models",
    kinds={"huggingface", "pytorch"},
    code_version=PHASE_CODE_VERSION,
    owners=["team:ml-platform"],
)
def base_model(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.Output[ResolvedModel]:
    """The base model as a local transformers directory: the embedded SmolLM2 (converted once from its GGUF
    and cached), the embedded tiny test model, a local path, or a hub id."""
    from ft_assets.phases.models import resolve_base_model

    resolved = settings.load()
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
            "path": dg.MetadataValue.path(str(model.path)),
            "content_hash": model.content_hash,
            "source": model.source,
        },
    )


@dg.asset(
    group_name="models",
    deps=[training_dataset, validation_dataset],
    kinds={"pytorch", "huggingface", "mlflow"},
    code_version=PHASE_CODE_VERSION,
    pool="gpu",
    owners=["team:ml-platform"],
)
def fine_tuned_model(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    mlflow: MlflowTracking,
    base_model: ResolvedModel,
) -> dg.Output[dict[str, Any]]:
    """LoRA adapter (or full model) + tokenizer + chat template + metadata, trained with TRL's SFTTrainer.

    Resumes from the newest checkpoint when base model, data and training config are unchanged.
    """
    from ft_assets.phases.training import load_training_data, train

    resolved = settings.load()
    output_dir = run_output_dir(resolved, "fine_tuned_model", context)
    with mlflow.phase_run(context, "finetuning", resolved) as run:
        train_set, validation_set = load_training_data(resolved, hf_token())
        for name, dataset in (("train", train_set), ("validation", validation_set)):
            if dataset is not None:
                run.log_dataset(
                    name, dataset.content_hash, dataset.resolved, "training" if name == "train" else "eval"
                )
        result = train(
            resolved,
            base_model,
            train_set,
            validation_set,
            output_dir=output_dir,
            checkpoint_root=resolved.artifacts_root / "fine_tuned_model" / "checkpoints",
            on_log=lambda logs, step: run.log_metrics(logs, step=step),
            hub_token=hf_token(),
        )
        run.log_metrics({f"final_{k}": v for k, v in result.metrics.items()})
        run.log_params(
            {
                "device": result.device.device,
                "dtype": result.device.dtype,
                "dropped_rows": len(result.dropped_rows),
            }
        )
        run.log_artifact(output_dir / "loss_curve.png")
        model_uri = run.log_peft_model(output_dir, "fine_tuned_model") if resolved.mlflow.log_model else None
        metadata = run.dagster_metadata()
    if result.resumed_from_step:
        context.log.info(f"resumed from checkpoint step {result.resumed_from_step}")
    value = {
        "path": str(output_dir),
        "merged_path": str(result.merged_dir) if result.merged_dir else None,
        "base_model_id": base_model.model_id,
        "base_model_hash": base_model.content_hash,
        "fingerprint": result.fingerprint,
        "data_versions": {
            "train": train_set.content_hash,
            "validation": validation_set.content_hash if validation_set else None,
        },
        "metrics": result.metrics,
        "mlflow_model_uri": model_uri,
    }
    m = result.metrics
    return dg.Output(
        value,
        data_version=dg.DataVersion(result.fingerprint),
        metadata={
            **metadata,
            "path": dg.MetadataValue.path(str(output_dir)),
            "train_loss": m["train_loss"],
            "eval_loss": m.get("eval_loss", float("nan")),
            "steps": int(m["steps"]),
            "trained_tokens": int(m["trained_tokens"]),
            "tokens_per_s": m["tokens_per_s"],
            "trainable_share": m["trainable_share"],
            "duration_s": m["duration_s"],
            "device": f"{result.device.device} ({result.device.dtype})",
            "dropped_rows": len(result.dropped_rows),
            "resumed_from_step": result.resumed_from_step or 0,
            "loss_curve": dg.MetadataValue.md(_loss_table(result.log_history)),
        },
    )


def _loss_table(log_history: list[dict[str, Any]]) -> str:
    lines = ["| step | train loss | validation loss |", "|---:|---:|---:|"]
    for entry in log_history:
        if "loss" in entry or "eval_loss" in entry:
            train = f"{entry['loss']:.4f}" if "loss" in entry else ""
            evaluation = f"{entry['eval_loss']:.4f}" if "eval_loss" in entry else ""
            lines.append(f"| {entry.get('step', '')} | {train} | {evaluation} |")
    return "\n".join(lines)
