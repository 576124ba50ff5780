"""The MLflow tracking resource every phase asset uses, and the sensor that closes runs left behind.

All MLflow logic lives in :mod:`ft_assets.tracking`; this module maps Dagster's run, logger and
config onto it.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import dagster as dg
from pydantic import Field

from ft_assets.config import ConfigError, Settings
from ft_assets.secrets import redact, strip_credentials
from ft_assets.tracking import open_phase_run
from ft_assets.tracking_options import TrackingOptions
from ft_assets.tracking_run import OrchestratorRun
from ft_assets.tracking_run import PhaseRun as _PhaseRun
from ft_assets.tracking_store import mark_parent_failed

#: Dagster run tags through which :data:`mlflow_run_failure_sensor` finds the MLflow parent run.
DAGSTER_TAG_PARENT_RUN = "ft_assets/mlflow_parent_run_id"
DAGSTER_TAG_TRACKING_URI = "ft_assets/mlflow_tracking_uri"
DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"


class PhaseRun(_PhaseRun):
    """:class:`ft_assets.tracking.PhaseRun` plus its Dagster materialization metadata."""

    def dagster_metadata(self) -> dict[str, dg.MetadataValue]:
        """``mlflow_run_id``, ``mlflow_run_url`` (a link, for stores with a UI), ``mlflow_parent_run_id``."""
        return {
            key: dg.MetadataValue.url(value) if key == "mlflow_run_url" else dg.MetadataValue.text(value)
            for key, value in self.metadata().items()
        }


class MlflowTracking(dg.ConfigurableResource):
    """MLflow tracking for phase assets: one parent run per Dagster run, one child run per phase.

    Every field is optional: unset fields come from the ``[mlflow]`` section of the settings passed to
    :meth:`phase_run`; ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` override both. Credentials
    come only from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``/``MLFLOW_TRACKING_TOKEN``.
    """

    tracking_uri: str | None = None
    mlflow_tracking_uri: str | None = Field(
        default=None, description="dagster-mlflow's name for tracking_uri"
    )
    experiment_name: str | None = None
    run_name: str | None = None
    run_name_prefix: str | None = None
    run_name_suffix: str | None = None
    parent_run_id: str | None = Field(default=None, description="attach to this existing parent run")
    env_to_tag: list[str] = Field(default_factory=list, description="environment variables to tag runs with")
    extra_tags: dict[str, str] = Field(default_factory=dict)
    required: bool | None = Field(default=None, description="false: run untracked when MLflow is down")
    log_system_metrics: bool | None = None
    system_metrics_sampling_interval: float | None = None

    def options(self, settings: Settings) -> TrackingOptions:
        """The settings this resource resolves to for ``settings`` (precedence in the class docstring)."""
        if self.tracking_uri and self.mlflow_tracking_uri and self.tracking_uri != self.mlflow_tracking_uri:
            raise ConfigError(
                "resource config sets both tracking_uri and mlflow_tracking_uri, to different values; "
                "set only one"
            )
        overrides: dict[str, Any] = {
            "tracking_uri": self.tracking_uri or self.mlflow_tracking_uri,
            "experiment_name": self.experiment_name,
            "run_name": self.run_name,
            "run_name_prefix": self.run_name_prefix,
            "run_name_suffix": self.run_name_suffix,
            "parent_run_id": self.parent_run_id,
            "env_to_tag": self.env_to_tag,
            "extra_tags": self.extra_tags,
            "required": self.required,
            "log_system_metrics": self.log_system_metrics,
            "system_metrics_sampling_interval": self.system_metrics_sampling_interval,
        }
        return TrackingOptions.resolve(settings, overrides)

    @contextmanager
    def phase_run(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        phase: str,
        settings: Settings,
    ) -> Iterator[PhaseRun]:
        """Track the block as the ``phase`` child run of this Dagster run's MLflow parent run.

        Checks the store before the block runs (see :func:`ft_assets.tracking.open_phase_run`); an
        exception from the block marks child and parent FAILED and propagates unchanged.
        """
        run_id = context.run_id
        base_url = os.environ.get("DAGSTER_WEBSERVER_URL", DEFAULT_WEBSERVER_URL).rstrip("/")
        orchestrator = OrchestratorRun(
            run_id=run_id, url=f"{base_url}/runs/{run_id}", child_tags={"dagster_op": context.op_def.name}
        )
        with open_phase_run(
            self.options(settings), phase, settings, orchestrator, context.log, PhaseRun
        ) as run:
            if run.enabled:
                _tag_dagster_run(context, run)
            yield cast(PhaseRun, run)  # open_phase_run builds runs of the class passed to it


def _tag_dagster_run(context: dg.AssetExecutionContext | dg.OpExecutionContext, run: _PhaseRun) -> None:
    """Record the MLflow parent on the Dagster run, for :data:`mlflow_run_failure_sensor`."""
    # Without credentials: run tags are shown in the UI and stored in the instance.
    uri = strip_credentials(str(run.tracking_uri))
    tags = {DAGSTER_TAG_PARENT_RUN: str(run.parent_run_id), DAGSTER_TAG_TRACKING_URI: uri}
    if all(context.run.tags.get(key) == value for key, value in tags.items()):
        return
    try:
        context.instance.add_run_tags(context.run_id, tags)
    except Exception as error:  # the sensor is a safety net; tracking itself works without it
        context.log.warning(f"could not tag the Dagster run with its MLflow parent run: {error}")


@dg.run_failure_sensor(
    name="mlflow_run_failure_sensor",
    description="Marks the MLflow parent run of a failed Dagster run FAILED (failures outside any phase).",
)
def mlflow_run_failure_sensor(context: dg.RunFailureSensorContext) -> None:
    """A failed step that is not a tracked phase would otherwise leave the parent FINISHED or RUNNING."""
    tags = context.dagster_run.tags
    parent_run_id, tracking_uri = tags.get(DAGSTER_TAG_PARENT_RUN), tags.get(DAGSTER_TAG_TRACKING_URI)
    if not parent_run_id or not tracking_uri:
        return
    reason = redact(f"Dagster run {context.dagster_run.run_id} failed: {context.failure_event.message}")
    if mark_parent_failed(_with_env_credentials(tracking_uri), parent_run_id, reason):
        context.log.info(f"marked MLflow parent run {parent_run_id} FAILED")


def _with_env_credentials(tagged_uri: str) -> str:
    """The tagged (credential-free) tracking URI, or ``MLFLOW_TRACKING_URI`` when that is the same store
    with its credentials (a database URI keeps them in the URI itself)."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "")
    return configured if configured and strip_credentials(configured) == tagged_uri else tagged_uri
