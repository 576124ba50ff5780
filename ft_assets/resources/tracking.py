"""The MLflow tracking resource every phase asset uses, and the sensor that closes runs left behind.

All MLflow logic lives in :mod:`ft_assets.tracking`; this module maps Dagster's run, logger and
config onto it.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import dagster as dg
from pydantic import Field, create_model

from ft_assets.config import ConfigError, Settings
from ft_assets.secrets import redact, strip_credentials
from ft_assets.tracking import open_phase_run
from ft_assets.tracking_options import OPTION_NAMES, TrackingOptions
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


def option_fields() -> dict[str, Any]:
    """Each option of :class:`TrackingOptions` (every ``[mlflow]`` key and the resource-only ones) as an
    optional resource field with the option's description: unset (``None``) leaves it to the config."""
    return {
        name: (info.annotation | None, Field(default=None, description=info.description))
        for name, info in TrackingOptions.model_fields.items()
        if name in OPTION_NAMES
    }


# The fields are derived (pydantic's create_model, a Dagster resource base) so that a new [mlflow] key is
# a resource field without a second declaration; the class below adds dagster-mlflow's alias and the logic.
_MlflowTrackingFields = create_model(
    "_MlflowTrackingFields", __base__=dg.ConfigurableResource, __module__=__name__, **option_fields()
)


class MlflowTracking(_MlflowTrackingFields):  # type: ignore[misc,valid-type]
    """MLflow tracking for phase assets: one parent run per Dagster run, one child run per phase.

    Its fields are the MLflow options (:data:`ft_assets.tracking_options.OPTION_NAMES`: every ``[mlflow]``
    key, plus ``parent_run_id``, ``env_to_tag``, ``extra_tags``), all optional: unset fields come from the
    ``[mlflow]`` section of the settings passed to :meth:`phase_run`; ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_EXPERIMENT_NAME`` override both. ``mlflow_tracking_uri`` is dagster-mlflow's name for
    ``tracking_uri``. Credentials come only from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``/
    ``MLFLOW_TRACKING_TOKEN``.
    """

    mlflow_tracking_uri: str | None = Field(
        default=None, description="dagster-mlflow's name for tracking_uri"
    )

    def options(self, settings: Settings) -> TrackingOptions:
        """The settings this resource resolves to for ``settings`` (precedence in the class docstring)."""
        overrides: dict[str, Any] = {name: getattr(self, name) for name in OPTION_NAMES}
        alias = self.mlflow_tracking_uri
        if overrides["tracking_uri"] and alias and overrides["tracking_uri"] != alias:
            raise ConfigError(
                "resource config sets both tracking_uri and mlflow_tracking_uri, to different values; "
                "set only one"
            )
        overrides["tracking_uri"] = overrides["tracking_uri"] or alias
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
