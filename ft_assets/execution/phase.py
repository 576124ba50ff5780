"""A phase (fine-tuning, inference, baseline inference, evaluation) with its MLflow logging, runnable in the
orchestrator's process or in an external one launched through Dagster Pipes: the request, the entry point
and the outcome. The phases' bodies are :mod:`~ft_assets.execution.finetune_phase`,
:mod:`~ft_assets.execution.inference_phase` and :mod:`~ft_assets.execution.evaluation_phase`.

The same :func:`execute` runs in both places, so outputs, materialization metadata and the MLflow child run
are the same whatever the launcher:

* in process, the Dagster step calls :func:`execute` with the :class:`~ft_assets.tracking.PhaseRun` it
  opened;
* externally, ``python -m ft_assets.execution.phase`` (under plain python, ``accelerate launch`` or
  ``torchrun``, locally or in a Kubernetes pod) reads its :class:`PhaseRequest` from the Pipes context
  extras, attaches to the child run named by ``MLFLOW_RUN_ID`` (see ``PhaseRun.subprocess_env``), runs
  :func:`execute`, and reports back through Pipes: metadata and data version with
  ``report_asset_materialization``, the asset's value (:mod:`ft_assets.asset_values`, as JSON) with
  ``report_custom_message``, progress with ``log``.
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

import logging

from ft_assets.execution.evaluation_phase import evaluate
from ft_assets.execution.finetune_phase import finetune
from ft_assets.execution.inference_phase import infer
from ft_assets.execution.processes import exit_when_orchestrator_gone
from ft_assets.execution.request import (
    REQUEST_EXTRA,
    VALUE_MESSAGE_KEY,
    PhaseOutcome,
    PhaseRequest,
    process_rank,
)
from ft_assets.tracking_active import attach_phase_run
from ft_assets.tracking_options import LogSink
from ft_assets.tracking_run import PhaseRun

_log = logging.getLogger(__name__)
#: Each phase's body.
BODIES = {"finetuning": finetune, "inference": infer, "baseline_inference": infer, "evaluation": evaluate}


def execute(request: PhaseRequest, run: PhaseRun, log: LogSink = _log) -> PhaseOutcome:
    """Run the requested phase, logging into ``run``, and return its outcome."""
    return BODIES[request.phase](request, request.load_settings(), run, log)


# ------------------------------------------------------------------------------- external process


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
        pipes.report_custom_message({VALUE_MESSAGE_KEY: outcome.value.to_json()})


if __name__ == "__main__":
    main()
