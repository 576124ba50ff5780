"""The fine-tuning phase's body: train the base model on the training split (resuming from a checkpoint when
nothing changed), log the run to MLflow and describe the published model (:class:`FineTunedModel`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ft_assets.asset_values import FineTunedModel
from ft_assets.config import Settings
from ft_assets.dataset_specs import TRAINING, VALIDATION
from ft_assets.execution.request import PhaseOutcome, PhaseRequest, pipes_meta, world_size
from ft_assets.phases.progress import training_progress
from ft_assets.phases.system_prompt import SystemPrompt
from ft_assets.secrets import hf_token
from ft_assets.tracking_options import LogSink
from ft_assets.tracking_run import PhaseRun


def finetune(request: PhaseRequest, settings: Settings, run: PhaseRun, log: LogSink) -> PhaseOutcome:
    """Train, log and publish the model the request names; the outcome's value is a :class:`FineTunedModel`."""
    from ft_assets.phases.checkpoints import checkpoint_root
    from ft_assets.phases.training import load_training_data, train

    base = request.resolved_base_model()
    output_dir = Path(request.output)
    token = hf_token()
    train_set, validation_set = load_training_data(settings, token)
    for spec, dataset in ((TRAINING, train_set), (VALIDATION, validation_set)):
        if dataset is not None:
            run.log_dataset(spec.name, dataset.content_hash, dataset.resolved, spec.name)
    result = train(
        settings,
        base,
        train_set,
        validation_set,
        output_dir=output_dir,
        checkpoint_root=checkpoint_root(settings),
        on_log=lambda logs, step: run.log_metrics(logs, step=step),
        hub_token=token,
        callbacks=[training_progress(log.info)],
    )
    run.log_metrics({f"final_{k}": v for k, v in result.metrics.items()})
    processes = world_size()
    run.log_params(
        {
            "device": result.device.device,
            "dtype": result.device.dtype,
            "dropped_rows": len(result.dropped_rows),
            "processes": processes,
            "base_quantization": result.base_quantization or "none",
            "evaluation_base": result.evaluation_base,
        }
    )
    run.log_artifact(output_dir / "loss_curve.png")
    model_uri = run.log_peft_model(output_dir, "fine_tuned_model")  # None with [mlflow] log_model off
    if result.resumed_from_step:
        log.info(f"resumed from checkpoint step {result.resumed_from_step}")
    m = result.metrics
    log.info(
        f"trained {int(m['steps'])} steps on {processes} x {result.device.device}: "
        f"train loss {m['train_loss']:.4f}"
    )
    value = FineTunedModel(
        path=str(output_dir),
        merged_path=str(result.merged_dir) if result.merged_dir else None,
        base_model_id=base.model_id,
        base_model_hash=base.content_hash,
        fingerprint=result.fingerprint,
        data_versions={
            "train": train_set.content_hash,
            "validation": validation_set.content_hash if validation_set else None,
        },
        metrics=result.metrics,
        mlflow_model_uri=model_uri,
        base_quantization=result.base_quantization,
        evaluation_base=result.evaluation_base,
        system_prompt=SystemPrompt.of(settings.fine_tuner).to_json(),
    )
    metadata = {
        "output_path": pipes_meta(str(output_dir), "path"),
        "train_loss": pipes_meta(m["train_loss"], "float"),
        "eval_loss": pipes_meta(m.get("eval_loss", float("nan")), "float"),
        "steps": pipes_meta(int(m["steps"]), "int"),
        "trained_tokens": pipes_meta(int(m["trained_tokens"]), "int"),
        "seen_tokens": pipes_meta(int(m["seen_tokens"]), "int"),
        "evaluation_base": pipes_meta(result.evaluation_base, "text"),
        "tokens_per_s": pipes_meta(m["tokens_per_s"], "float"),
        "trainable_params": pipes_meta(int(m["trainable_params"]), "int"),
        "total_params": pipes_meta(int(m["total_params"]), "int"),
        "trainable_share": pipes_meta(m["trainable_share"], "float"),
        "system_prompt": pipes_meta(SystemPrompt.of(settings.fine_tuner).describe(), "text"),
        "duration_s": pipes_meta(m["duration_s"], "float"),
        "device": pipes_meta(f"{result.device.device} ({result.device.dtype})", "text"),
        "processes": pipes_meta(processes, "int"),
        "dropped_rows": pipes_meta(len(result.dropped_rows), "int"),
        "resumed_from_step": pipes_meta(result.resumed_from_step or 0, "int"),
        "loss_curve": pipes_meta(loss_table(result.log_history), "md"),
    }
    return PhaseOutcome(value, metadata, data_version=result.fingerprint)


def loss_table(log_history: list[dict[str, Any]]) -> str:
    """Train and validation loss per logged step, as a markdown table."""
    lines = ["| step | train loss | validation loss |", "|---:|---:|---:|"]
    for entry in log_history:
        if "loss" in entry or "eval_loss" in entry:
            train = f"{entry['loss']:.4f}" if "loss" in entry else ""
            evaluation = f"{entry['eval_loss']:.4f}" if "eval_loss" in entry else ""
            lines.append(f"| {entry.get('step', '')} | {train} | {evaluation} |")
    return "\n".join(lines)
