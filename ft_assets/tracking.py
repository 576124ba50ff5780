"""MLflow tracking for the pipeline, free of any orchestrator: the lifecycle of the run tree (one parent run
per orchestrator run, one child run per phase: :func:`open_phase_run`), with options from
:mod:`ft_assets.tracking_options`, store calls in :mod:`ft_assets.tracking_store`, the child run's API in
:mod:`ft_assets.tracking_run`, keys from :mod:`ft_assets.tracking_keys` and every value redacted by
:mod:`ft_assets.secrets`.

The Dagster resource in :mod:`ft_assets.resources.tracking` is a thin wrapper over
:func:`open_phase_run`. ``mlflow`` is imported inside functions because this module is imported by the
Dagster code location, which must load quickly.

Choices documented here once:

* Keys (metrics, params, tags) are valid MLflow keys, stable per run, collisions reported: see
  :mod:`ft_assets.tracking_keys`.
* Metric values: anything ``float()`` accepts except strings (ints, bools, numpy and 0-d torch
  scalars) is a metric; other values become tags, ``None`` is dropped. NaN is stored as NaN and
  ``±inf`` as ``±1.797e308`` (MLflow's own handling), so a diverged loss stays visible.
* Params are immutable in MLflow. Re-logging a param with the value it already has is skipped; a
  different value is logged under ``<key>.2`` (then ``.3``...: the first free slot, or the slot that
  already holds that value) with a warning, instead of failing the phase.
* Secrets (see :mod:`ft_assets.secrets`: secret variables, ``${VAR}`` expansions, URL credentials) are
  redacted from every param, tag, error message, traceback and JSON/YAML artifact written here.
  Credentials embedded in an http(s) tracking URI are moved to ``MLFLOW_TRACKING_USERNAME``/
  ``MLFLOW_TRACKING_PASSWORD`` so MLflow never prints them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ft_assets.config import ConfigError, Settings
from ft_assets.secrets import redact, strip_credentials
from ft_assets.tracking_keys import (
    MAX_TAG_VALUE_LENGTH,
    RunKeys,
)

if TYPE_CHECKING:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from ft_assets.tracking_options import (
    ERROR_MESSAGE_LENGTH,
    PHASES,
    RESOLVED_CONFIG_ARTIFACT,
    TAG_DAGSTER_RUN_ID,
    TAG_DAGSTER_RUN_URL,
    TAG_ERROR,
    TAG_FAILED_PHASE,
    TAG_GIT_COMMIT,
    TAG_PHASE,
    TAG_ROLE,
    TAG_VERSION,
    TRACEBACK_ARTIFACT,
    LogSink,
    TrackingOptions,
    adopt_credentials,
    check_reachable,
)
from ft_assets.tracking_run import OrchestratorRun, PhaseRun
from ft_assets.tracking_store import (
    client_for,
    ensure_experiment,
    find_or_create_parent,
    git_commit,
    package_version,
    resolved_config_toml,
    store_metrics,
    store_params,
    store_tags,
)

_log = logging.getLogger(__name__)


class _Tracker:
    """Opens the parent/child runs for :func:`open_phase_run` and closes them."""

    def __init__(
        self,
        options: TrackingOptions,
        phase: str,
        settings: Settings,
        orchestrator: OrchestratorRun,
        log: LogSink,
    ) -> None:
        self.options = options
        self.phase = phase
        self.settings = settings
        self.orchestrator = orchestrator
        self.log = log
        self.uri = adopt_credentials(options.tracking_uri)
        self.client = client_for(self.uri)
        self.monitor: SystemMetricsMonitor | None = None
        # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; the user's value must come back
        # afterwards, or the next phase in this process would take ours for an override.
        self._env_uri = os.environ.get("MLFLOW_TRACKING_URI")

    def restore_tracking_uri(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self._env_uri)

    def start(self, run_cls: type[PhaseRun]) -> PhaseRun:
        import mlflow
        from mlflow.tracking.context.registry import resolve_tags

        client, options = self.client, self.options
        if options.parent_run_id:
            parent = client.get_run(options.parent_run_id)
            if parent.info.lifecycle_stage == "deleted":
                raise ConfigError(
                    f"{options.source('parent_run_id')}: MLflow run {parent.info.run_id} is deleted"
                )
            experiment_id = parent.info.experiment_id
        else:
            experiment_id = ensure_experiment(
                client, self.uri, options.experiment_name, options.source("experiment_name")
            )
            parent = find_or_create_parent(
                client,
                experiment_id,
                self.orchestrator.run_id,
                options.parent_run_name(self.orchestrator.run_id),
                self._shared_tags(),
            )
        parent_id = parent.info.run_id
        child_id = None
        try:
            store_tags(client, parent_id, self._parent_tags())
            store_params(client, parent_id, self.settings.flat_params(), self.log)
            client.log_text(parent_id, resolved_config_toml(self.settings), RESOLVED_CONFIG_ARTIFACT)
            child_tags = {
                **self._shared_tags(),
                **self.orchestrator.child_tags,
                TAG_DAGSTER_RUN_ID: self.orchestrator.run_id,
                TAG_ROLE: "child",
                TAG_PHASE: self.phase,
            }
            context_tags = {k: redact(str(v)) for k, v in resolve_tags().items()}
            child_id = client.create_run(
                experiment_id,
                run_name=f"{parent.info.run_name}_{self.phase}",
                tags={**context_tags, **_clean_tags(child_tags), "mlflow.parentRunId": parent_id},
            ).info.run_id
            if parent.data.tags.get(TAG_FAILED_PHASE, self.phase) == self.phase:
                client.update_run(parent_id, status="RUNNING")
            self._start_monitor(child_id)
            mlflow.set_tracking_uri(self.uri)
            # Active in this thread, so phase code (and transformers' MLflowCallback) logs into the child.
            mlflow.start_run(run_id=child_id, nested=True)
        except Exception as error:
            # Never leave a half-opened tree RUNNING.
            if self.monitor is not None:
                self.monitor.finish()
            with contextlib.suppress(Exception):
                message = redact(f"tracking setup failed: {type(error).__name__}: {error}")[
                    :ERROR_MESSAGE_LENGTH
                ]
                for run_id in filter(None, (child_id, parent_id)):
                    store_tags(client, run_id, {TAG_ERROR: message})
                    client.set_terminated(run_id, "FAILED")
            self.restore_tracking_uri()
            raise
        run = run_cls(
            self.phase,
            self.log,
            client=client,
            tracking_uri=self.uri,
            experiment_id=experiment_id,
            run_id=child_id,
            parent_run_id=parent_id,
            required=options.required,
            log_model=options.log_model,
        )
        self.log.info(
            f"MLflow {self.phase} run {run.url or child_id} (parent {parent_id}) "
            f"in {strip_credentials(self.uri)}"
        )
        return run

    def _shared_tags(self) -> dict[str, str]:
        tags = {f"env.{var}": os.environ[var] for var in self.options.env_to_tag if var in os.environ}
        tags.update(self.options.extra_tags)
        return _clean_tags(tags)

    def _parent_tags(self) -> dict[str, str]:
        tags = {
            **self._shared_tags(),
            TAG_DAGSTER_RUN_ID: self.orchestrator.run_id,
            TAG_VERSION: package_version(),
        }
        if self.orchestrator.url:
            tags[TAG_DAGSTER_RUN_URL] = self.orchestrator.url
        if commit := git_commit(self.settings.base_dir):
            tags[TAG_GIT_COMMIT] = commit
        return tags

    def _start_monitor(self, run_id: str) -> None:
        if not self.options.log_system_metrics:
            return
        import importlib.util

        if importlib.util.find_spec("psutil") is None:
            self.log.warning("MLflow system metrics are off: the psutil package is not installed")
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(
            run_id, sampling_interval=self.options.system_metrics_sampling_interval, tracking_uri=self.uri
        )
        self.monitor.start()

    def finish(self, run: PhaseRun, seconds: float, error: BaseException | None) -> None:
        """Durations, statuses and (on failure) the redacted error; the child run is always ended."""
        import mlflow

        child_id, parent_id = str(run.run_id), str(run.parent_run_id)
        status = "FINISHED" if error is None else ("FAILED" if isinstance(error, Exception) else "KILLED")
        duration = {f"{self.phase}_duration_s": seconds}
        try:
            if self.monitor is not None:
                self.monitor.finish()
            store_metrics(self.client, child_id, duration, None)
            if error is not None:
                message = redact(f"{type(error).__name__}: {error}")[:ERROR_MESSAGE_LENGTH]
                store_tags(self.client, child_id, {TAG_ERROR: message})
                self.client.log_text(
                    child_id, redact("".join(traceback.format_exception(error))), TRACEBACK_ARTIFACT
                )
        finally:
            # End any run the phase left open on top of ours, then ours.
            while (active := mlflow.active_run()) is not None:
                mlflow.end_run(status)
                if active.info.run_id == child_id:
                    break
            else:
                self.client.set_terminated(child_id, status)
            self.restore_tracking_uri()
        parent = self.client.get_run(parent_id)
        total = max(0.0, time.time() - parent.info.start_time / 1000)
        store_metrics(self.client, parent_id, {**duration, "total_duration_s": total}, None)
        if error is not None:
            store_tags(
                self.client, parent_id, {TAG_FAILED_PHASE: self.phase, TAG_ERROR: f"{self.phase}: {message}"}
            )
            self.client.set_terminated(parent_id, status)
            return
        failed = parent.data.tags.get(TAG_FAILED_PHASE)
        if failed == self.phase:  # a retry of the phase that failed has now succeeded
            self.client.delete_tag(parent_id, TAG_FAILED_PHASE)
        self.client.set_terminated(parent_id, "FINISHED" if failed in (None, self.phase) else "FAILED")


def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """``tags`` for ``create_run`` (no run id yet): two names on one key keep both, the second hashed."""
    mapping, _ = RunKeys().assign(str(k) for k in tags)
    return {mapping[str(k)]: redact(str(v))[:MAX_TAG_VALUE_LENGTH] for k, v in tags.items()}


@contextmanager
def open_phase_run(
    options: TrackingOptions,
    phase: str,
    settings: Settings,
    orchestrator: OrchestratorRun,
    log: LogSink = _log,
    run_cls: type[PhaseRun] = PhaseRun,
) -> Iterator[PhaseRun]:
    """Track one phase as a child of the orchestrator run's parent run; see :mod:`ft_assets.tracking`.

    Reachability and names are checked before any work. An unreachable store raises
    :class:`TrackingUnavailableError`, or with ``required = false`` logs a warning and yields a disabled
    :class:`PhaseRun`. An exception from the block marks child and parent FAILED (tag
    ``error_message``, artifact ``error/traceback.txt``, both redacted) and propagates unchanged.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    if not options.parent_run_id:
        options.parent_run_name(orchestrator.run_id)  # a bad name is a config error, tracked or not
    tracker: _Tracker | None = None
    try:
        check_reachable(options.tracking_uri, options.source("tracking_uri"))
        tracker = _Tracker(options, phase, settings, orchestrator, log)
        run = tracker.start(run_cls)
    except ConfigError:
        raise
    except Exception as error:
        if options.required:
            raise
        log.warning(f"MLflow tracking is off for phase {phase!r} (required = false): {redact(str(error))}")
        tracker = None
        run = run_cls(phase, log)
    if tracker is None:
        yield run
        return
    started = time.monotonic()
    try:
        yield run
    except BaseException as error:
        try:
            tracker.finish(run, time.monotonic() - started, error)
        except Exception as tracking_error:  # never hide the phase's own exception
            log.warning(
                f"MLflow: could not record the failure of phase {phase!r}: {redact(str(tracking_error))}"
            )
        raise
    with run._guard(f"finish phase {phase}"):
        tracker.finish(run, time.monotonic() - started, None)
