"""An existing MLflow run made the active run of this thread, for code that logs through MLflow's fluent API
(transformers' callbacks, ``mlflow.transformers.log_model``, ``mlflow.genai.evaluate``): a phase process
attached to the child run its orchestrator opened (:func:`attach_phase_run`), and an ended run resumed for
the length of a block (:func:`resumed_run`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ft_assets.tracking_options import LogSink, adopt_credentials
from ft_assets.tracking_run import LOG_MODEL_ENV, PhaseRun
from ft_assets.tracking_store import client_for

_TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def attach_phase_run(
    phase: str, log: LogSink, *, required: bool, env: Mapping[str, str] | None = None
) -> PhaseRun:
    """The orchestrator's child run, from ``MLFLOW_TRACKING_URI``/``MLFLOW_RUN_ID``/``MLFLOW_EXPERIMENT_ID``
    (and ``FT_ASSETS_MLFLOW_LOG_MODEL``) as :meth:`PhaseRun.subprocess_env` set them.

    The run is made active in this process (``log_peft_model`` and transformers' callbacks log into the
    active run) without system metrics: the orchestrator's side already samples them. Its final status is
    set by the orchestrator once this process has exited. Without those variables (tracking off in the
    orchestrator) the returned run is disabled.
    """
    source = os.environ if env is None else env
    run_id, uri = source.get("MLFLOW_RUN_ID"), source.get(_TRACKING_URI_ENV)
    if not run_id or not uri:
        return PhaseRun(phase, log)
    uri = adopt_credentials(uri)
    client = client_for(uri)
    parent_run_id = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.start_run(run_id=run_id, log_system_metrics=False)
    return PhaseRun(
        phase,
        log,
        client=client,
        tracking_uri=uri,
        experiment_id=source.get("MLFLOW_EXPERIMENT_ID"),
        run_id=run_id,
        parent_run_id=parent_run_id,
        required=required,
        log_model=source.get(LOG_MODEL_ENV, "true").lower() != "false",
    )


@contextmanager
def resumed_run(tracking_uri: str, run_id: str) -> Iterator[None]:
    """``run_id`` active in this thread (no system metrics) for the block, then ended again; the tracking
    URI and its environment variable are restored afterwards."""
    import mlflow

    if (active := mlflow.active_run()) is not None:
        raise RuntimeError(f"another MLflow run ({active.info.run_id}) is active in this thread")
    previous_env, previous_uri = os.environ.get(_TRACKING_URI_ENV), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(adopt_credentials(tracking_uri))
    try:
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            yield
    finally:
        mlflow.set_tracking_uri(previous_uri)  # exports the variable again: put back what was there
        if previous_env is None:
            os.environ.pop(_TRACKING_URI_ENV, None)
        else:
            os.environ[_TRACKING_URI_ENV] = previous_env
