"""One GPU phase (fine-tuning, inference, baseline inference) with its MLflow logging, runnable in the
orchestrator's process or in an external one launched through Dagster Pipes.

The same :func:`execute` runs in both places, so outputs, materialization metadata and the MLflow child run
are the same whatever the launcher:

* in process, the Dagster step calls :func:`execute` with the :class:`~ft_assets.tracking.PhaseRun` it
  opened;
* externally, ``python -m ft_assets.execution.phase`` (under plain python, ``accelerate launch`` or
  ``torchrun``, locally or in a Kubernetes pod) reads its :class:`PhaseRequest` from the Pipes context
  extras, attaches to the child run named by ``MLFLOW_RUN_ID`` (see ``PhaseRun.subprocess_env``), runs
  :func:`execute`, and reports back through Pipes: metadata and data version with
  ``report_asset_materialization``, the asset's value with ``report_custom_message``, progress with ``log``.
  Launched as a local subprocess, it stops when the process that launched it is gone
  (:mod:`ft_assets.execution.processes`).

Secrets (``HF_TOKEN``, ``OPENAI_API_KEY``, ``MLFLOW_TRACKING_PASSWORD``) are read from the environment
here; a request never carries them. In process the phase gets the settings object itself; across processes
the settings travel as data (:func:`ft_assets.config_env.settings_as_data`: ``${VAR}`` keys as their
templates, URL credentials stripped, nothing replaced by substring). Under a multi-process launcher every rank trains (DDP/FSDP need all of
them), but only rank 0 talks to Pipes and MLflow and publishes the output directory.

This module imports ``dagster_pipes`` (the dependency-free protocol package), never ``dagster``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_assets.config import Settings, build_settings, settings_as_data
from ft_assets.dataset_specs import TESTING, TRAINING, VALIDATION
from ft_assets.execution.processes import exit_when_orchestrator_gone
from ft_assets.phases.models import ResolvedModel
from ft_assets.phases.progress import InferenceProgress, training_progress
from ft_assets.phases.system_prompt import SystemPrompt, inference_columns
from ft_assets.secrets import hf_token
from ft_assets.tracking_active import attach_phase_run
from ft_assets.tracking_options import LogSink
from ft_assets.tracking_run import PhaseRun

#: The Pipes extra that carries the :class:`PhaseRequest`.
REQUEST_EXTRA = "ft_assets_phase_request"
#: The key of the custom Pipes message that carries the asset's value.
VALUE_MESSAGE_KEY = "ft_assets_value"
REMOTE_PHASES = ("finetuning", "inference", "baseline_inference")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhaseRequest:
    """Everything a phase needs, as JSON: resolved settings (no secrets), model locations, output path."""

    phase: str
    settings: dict[str, Any]
    base_dir: str
    output: str
    base_model: dict[str, str] | None = None
    model_dir: str | None = None
    model_hash: str | None = None
    tracking_required: bool = True
    #: The settings object itself, for a phase run in this process (never serialized).
    local_settings: Settings | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.phase not in REMOTE_PHASES:
            raise ValueError(f"phase {self.phase!r} cannot be launched; expected one of {REMOTE_PHASES}")

    @classmethod
    def finetuning(
        cls, settings: Settings, base_model: ResolvedModel, output_dir: Path, *, tracking_required: bool
    ) -> PhaseRequest:
        """Train ``base_model`` and publish the adapter (or full model) at ``output_dir``."""
        return cls(
            phase="finetuning",
            settings=settings_as_data(settings),
            base_dir=str(settings.base_dir),
            output=str(output_dir),
            base_model=base_model.to_json(),
            tracking_required=tracking_required,
            local_settings=settings,
        )

    @classmethod
    def inference(
        cls,
        phase: str,
        settings: Settings,
        *,
        model_dir: Path,
        model_hash: str,
        output_path: Path,
        tracking_required: bool,
    ) -> PhaseRequest:
        """Generate answers of ``model_dir`` on the test split into the JSONL ``output_path``."""
        return cls(
            phase=phase,
            settings=settings_as_data(settings),
            base_dir=str(settings.base_dir),
            output=str(output_path),
            model_dir=str(model_dir),
            model_hash=model_hash,
            tracking_required=tracking_required,
            local_settings=settings,
        )

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "local_settings"}

    @classmethod
    def from_json(cls, data: Any) -> PhaseRequest:
        if not isinstance(data, dict):
            raise ValueError(f"Pipes extra {REQUEST_EXTRA!r} is missing or not an object: {data!r}")
        return cls(**data)

    def load_settings(self) -> Settings:
        if self.local_settings is not None:
            return self.local_settings
        return build_settings(
            self.settings, source=f"phase request ({self.phase})", base_dir=Path(self.base_dir)
        )

    def resolved_base_model(self) -> ResolvedModel:
        if self.base_model is None:
            raise ValueError(f"phase request ({self.phase}) names no base model")
        values = self.base_model
        return ResolvedModel(
            values["model_id"], Path(values["path"]), values["content_hash"], values["source"]
        )


@dataclass
class PhaseOutcome:
    """What a phase produced: the asset's value, its materialization metadata in the Pipes wire format
    (``{"raw_value": ..., "type": ...}``), and its data version."""

    value: dict[str, Any]
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_version: str | None = None


def _meta(value: Any, kind: str) -> dict[str, Any]:
    return {"raw_value": value, "type": kind}


def execute(request: PhaseRequest, run: PhaseRun, log: LogSink = _log) -> PhaseOutcome:
    """Run the requested phase, logging into ``run``, and return its outcome."""
    settings = request.load_settings()
    if request.phase == "finetuning":
        return _finetune(request, settings, run, log)
    return _infer(request, settings, run, log)


def _finetune(request: PhaseRequest, settings: Settings, run: PhaseRun, log: LogSink) -> PhaseOutcome:
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
    value = {
        "path": str(output_dir),
        "merged_path": str(result.merged_dir) if result.merged_dir else None,
        "base_model_id": base.model_id,
        "base_model_hash": base.content_hash,
        "fingerprint": result.fingerprint,
        "data_versions": {
            "train": train_set.content_hash,
            "validation": validation_set.content_hash if validation_set else None,
        },
        "metrics": result.metrics,
        "mlflow_model_uri": model_uri,
        "base_quantization": result.base_quantization,
        "evaluation_base": result.evaluation_base,
        "system_prompt": SystemPrompt.of(settings.fine_tuner).to_json(),
    }
    metadata = {
        "output_path": _meta(str(output_dir), "path"),
        "train_loss": _meta(m["train_loss"], "float"),
        "eval_loss": _meta(m.get("eval_loss", float("nan")), "float"),
        "steps": _meta(int(m["steps"]), "int"),
        "trained_tokens": _meta(int(m["trained_tokens"]), "int"),
        "seen_tokens": _meta(int(m["seen_tokens"]), "int"),
        "evaluation_base": _meta(result.evaluation_base, "text"),
        "tokens_per_s": _meta(m["tokens_per_s"], "float"),
        "trainable_params": _meta(int(m["trainable_params"]), "int"),
        "total_params": _meta(int(m["total_params"]), "int"),
        "trainable_share": _meta(m["trainable_share"], "float"),
        "system_prompt": _meta(SystemPrompt.of(settings.fine_tuner).describe(), "text"),
        "duration_s": _meta(m["duration_s"], "float"),
        "device": _meta(f"{result.device.device} ({result.device.dtype})", "text"),
        "processes": _meta(processes, "int"),
        "dropped_rows": _meta(len(result.dropped_rows), "int"),
        "resumed_from_step": _meta(result.resumed_from_step or 0, "int"),
        "loss_curve": _meta(loss_table(result.log_history), "md"),
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


def _infer(request: PhaseRequest, settings: Settings, run: PhaseRun, log: LogSink) -> PhaseOutcome:
    from ft_assets.phases.datasets import load_configured
    from ft_assets.phases.generation import generate
    from ft_assets.phases.models import configured_chat_template

    if request.model_dir is None or request.model_hash is None:
        raise ValueError(f"phase request ({request.phase}) names no model directory or model hash")
    output = Path(request.output)
    config, prompt_warning = inference_columns(settings.inferencer, Path(request.model_dir))
    if prompt_warning:
        log.warning(prompt_warning)
    dataset = load_configured(TESTING, settings, hf_token(), columns=config)
    run.log_dataset(TESTING.name, dataset.content_hash, dataset.resolved, TESTING.name)
    template = configured_chat_template(settings)
    progress = InferenceProgress(len(dataset.examples), log.info, label=request.phase)
    result = generate(
        Path(request.model_dir), dataset, config, output, chat_template=template, progress=progress
    )
    run.log_metrics(result.metrics)
    run.log_params(
        {"backend": result.backend, "device": result.device.device, "model_hash": request.model_hash}
    )
    run.log_artifact(output)
    log.info(
        f"{result.rows} rows from {request.model_dir} in {result.duration_s:.1f} s on {result.device.device}"
    )
    value = {
        "path": str(output),
        "rows": result.rows,
        "expected_rows": len(dataset.examples),
        "empty_responses": result.empty_responses,
        "model_hash": request.model_hash,
        "dataset_hash": dataset.content_hash,
        "metrics": result.metrics,
    }
    metrics = result.metrics
    metadata = {
        "output_path": _meta(str(output), "path"),
        "rows": _meta(result.rows, "int"),
        "rows_per_s": _meta(metrics["rows_per_s"], "float"),
        "generated_tokens_per_s": _meta(metrics["generated_tokens_per_s"], "float"),
        "empty_responses": _meta(result.empty_responses, "int"),
        "finish_reasons": _meta(result.finish_reasons, "json"),
        "device": _meta(f"{result.device.device} ({result.device.dtype})", "text"),
    }
    return PhaseOutcome(value, metadata)


# ------------------------------------------------------------------------------- external process


def process_rank() -> int:
    """This process's global rank under torchrun / accelerate launch (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes train together (1 unless launched by torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _request_from_pipes_context() -> PhaseRequest:
    """The request, read from the injected Pipes context without opening the message channel (which
    belongs to rank 0)."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as context:
        return PhaseRequest.from_json(context.get("extras", {}).get(REQUEST_EXTRA))


def main() -> None:
    """Entry point of the external process; see the module docstring."""
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        raise SystemExit(
            "ft_assets.execution.phase runs phases launched by the ComputeLauncher resource through Dagster "
            "Pipes; to run a phase alone use python -m ft_assets.phases.training or "
            "python -m ft_assets.phases.generation"
        )
    exit_when_orchestrator_gone()
    rank = process_rank()
    if rank != 0:
        # Other ranks train alongside rank 0 untracked; train() publishes from rank 0 alone.
        request = _request_from_pipes_context()
        execute(request, PhaseRun(request.phase, _log), _log)
        return
    with open_dagster_pipes() as pipes:
        request = PhaseRequest.from_json(pipes.get_extra(REQUEST_EXTRA))
        run = attach_phase_run(request.phase, pipes.log, required=request.tracking_required)
        outcome = execute(request, run, pipes.log)
        pipes.report_asset_materialization(metadata=outcome.metadata, data_version=outcome.data_version)
        pipes.report_custom_message({VALUE_MESSAGE_KEY: outcome.value})


if __name__ == "__main__":
    main()
