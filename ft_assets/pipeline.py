"""``FineTunePipeline``: the seed's Python API over the same Dagster assets the UI and the sensor materialize.

Every phase call is a Dagster run of ``fine_tune_pipeline`` for that phase's asset group, executed in this
process against a persistent Dagster instance, so a later call (or the UI, given the same ``DAGSTER_HOME``)
finds earlier outputs through the IO manager::

    pipeline = FineTunePipeline(config_path="config/pipeline.toml")
    results = pipeline.run_pipeline()          # the enabled phases, in one Dagster run

    pipeline.setup_mlflow()
    pipeline.start_mlflow_run()                # the following phases share one MLflow parent run
    pipeline.run_finetuning()
    pipeline.run_inference()
    pipeline.run_evaluation()
    pipeline.stop_mlflow_run()

Phases: ``finetuning`` (asset group ``models``), ``inference`` (``inference``), ``evaluation``
(``evaluation``). A phase whose inputs come from a phase that is not run here uses that phase's latest
materialization, and fails with a one-line :class:`PipelineError` when there is none.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.assets.common import PREFLIGHT_TAG
from ft_assets.config import PROJECT_ROOT, Settings
from ft_assets.definitions import defs
from ft_assets.errors import FtAssetsError
from ft_assets.jobs import PHASE_GROUPS, PHASES, fine_tune_pipeline, observing_datasets
from ft_assets.phase_plan import plan_phases
from ft_assets.phases.preflight_report import PreflightReport
from ft_assets.preflight import preflight
from ft_assets.resources.settings import PipelineSettings, default_config_path
from ft_assets.resources.tracking import MlflowTracking
from ft_assets.secrets import redact
from ft_assets.tracking_options import TrackingOptions, check_reachable

#: Dagster run tag naming the phases a run executed (``finetuning,inference``).
PHASES_TAG = "ft_assets/phases"
INSTANCE_TEMPLATE = PROJECT_ROOT / "dagster.yaml"
_log = logging.getLogger(__name__)


class PipelineError(FtAssetsError, RuntimeError):
    """A phase failed or cannot run; the message is one line that says which and why."""


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block only (the assets read secrets from the environment)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _one_line(text: str) -> str:
    return redact("; ".join(line.strip() for line in text.strip().splitlines() if line.strip()))


def _root_cause(error: Any) -> Any:
    while error.cause is not None:
        error = error.cause
    return error


def _plain(value: Any) -> Any:
    """A metadata value as plain data (``TextMetadataValue('x')`` -> ``'x'``)."""
    return getattr(value, "value", value)


class FineTunePipeline:
    """Fine-tuning, inference and evaluation as Dagster runs of the project's assets.

    ``config_path``: the TOML config (default ``$FT_ASSETS_CONFIG`` or ``config/pipeline.toml``).
    ``hf_key``/``openai_key``: put into the environment as ``HF_TOKEN``/``OPENAI_API_KEY`` while a phase
    runs, never stored, logged or passed as config. ``overrides``: per-section config overrides
    (``{"pipeline": {"enable_finetuning": False}}``), laid over the file like launchpad run config.
    ``dagster_home``: the Dagster instance folder (default ``$DAGSTER_HOME``, else ``.dagster_home`` next
    to the config's project).
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        hf_key: str | None = None,
        openai_key: str | None = None,
        *,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        dagster_home: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config_path = str(config_path or default_config_path())
        self._overrides = {section: dict(values) for section, values in (overrides or {}).items()}
        self.settings: Settings = PipelineSettings(config_path=self.config_path, **self._overrides).load()
        self._secrets = {
            name: value for name, value in (("HF_TOKEN", hf_key), ("OPENAI_API_KEY", openai_key)) if value
        }
        home = dagster_home or os.environ.get("DAGSTER_HOME") or self.settings.base_dir / ".dagster_home"
        self.dagster_home = Path(home).expanduser().resolve()
        self._instance: dg.DagsterInstance | None = None
        self.tracking: TrackingOptions | None = None
        self._sharing_parent = False
        #: The MLflow parent run shared by the phases after :meth:`start_mlflow_run` (set by the first one).
        self.mlflow_run_id: str | None = None

    def __repr__(self) -> str:
        return f"FineTunePipeline(config_path={self.config_path!r}, dagster_home={str(self.dagster_home)!r})"

    @property
    def instance(self) -> dg.DagsterInstance:
        """The persistent Dagster instance in :attr:`dagster_home` (created with the project's dagster.yaml)."""
        if self._instance is None:
            self.dagster_home.mkdir(parents=True, exist_ok=True)
            config = self.dagster_home / "dagster.yaml"
            if not config.exists() and INSTANCE_TEMPLATE.is_file():
                shutil.copyfile(INSTANCE_TEMPLATE, config)
            self._instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        return self._instance

    def close(self) -> None:
        """Release the Dagster instance (its sqlite connections)."""
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None

    # ------------------------------------------------------------------------------------------ MLflow

    def setup_mlflow(self) -> TrackingOptions:
        """Resolve the MLflow settings (``[mlflow]`` < ``MLFLOW_*``) and check the store can be used."""
        self.tracking = MlflowTracking().options(self.settings)
        check_reachable(self.tracking.tracking_uri, self.tracking.source("tracking_uri"))
        return self.tracking

    def start_mlflow_run(self) -> None:
        """Make the following phase calls share one MLflow parent run (the first phase creates it, named
        from ``[mlflow]``; its id is then :attr:`mlflow_run_id`)."""
        if self.tracking is None:
            self.setup_mlflow()
        self._sharing_parent = True
        self.mlflow_run_id = None

    def stop_mlflow_run(self) -> str | None:
        """End the shared parent run: later phase calls get a parent run each. Returns the parent's id.

        Each phase already leaves the parent FINISHED, or FAILED with the failing phase tagged.
        """
        parent, self.mlflow_run_id, self._sharing_parent = self.mlflow_run_id, None, False
        return parent

    # ------------------------------------------------------------------------------------------ phases

    def run_finetuning(self) -> dict[str, Any]:
        """Materialize the base model and the fine-tuned model; the phase's result dict."""
        return self._run(["finetuning"])["phases"]["finetuning"]

    def run_inference(self) -> dict[str, Any]:
        """Inference with the latest fine-tuned model (and the base model); the phase's result dict."""
        return self._run(["inference"])["phases"]["inference"]

    def run_evaluation(self) -> dict[str, Any]:
        """Score the latest inference results; the phase's result dict (with the asset checks)."""
        return self._run(["evaluation"])["phases"]["evaluation"]

    def plan(self) -> tuple[list[str], dict[str, str]]:
        """The phases ``[pipeline]`` runs, in order, and why each other phase is skipped."""
        return plan_phases(self.settings.pipeline)

    def run_pipeline(self) -> dict[str, Any]:
        """The phases ``[pipeline]`` enables, up to ``stop_after_*``, as one Dagster run.

        Returns ``{"status", "dagster_run_id", "mlflow_parent_run_id", "phases": {phase: result}}``; a
        skipped phase's result is ``{"status": "skipped", "reason": ...}``. A run phase's ``assets`` give
        each asset's ``value`` as the asset holds it: the typed values of :mod:`ft_assets.asset_values`
        (``FineTunedModel``, ``InferenceResults``, ``EvaluationReport``, ``PromotionResult``; ``to_json()``
        for plain data) and the base model's ``ResolvedModel``.
        """
        phases, skipped = self.plan()
        if not phases:
            return {
                "status": "completed",
                "dagster_run_id": None,
                "mlflow_parent_run_id": None,
                "phases": {phase: {"status": "skipped", "reason": skipped[phase]} for phase in PHASES},
            }
        results = self._run(phases)
        for phase, reason in skipped.items():
            results["phases"][phase] = {"status": "skipped", "reason": reason}
        results["phases"] = {phase: results["phases"][phase] for phase in PHASES}
        return results

    # -------------------------------------------------------------------------------------- execution

    def _selection(self, phases: Sequence[str]) -> list[dg.AssetKey]:
        """The phases' assets; inputs from outside them must have been materialized before."""
        graph = defs.resolve_asset_graph()
        selected = dg.AssetSelection.groups(*(PHASE_GROUPS[phase] for phase in phases)).resolve(graph)
        inputs = {parent for key in selected for parent in graph.get(key).parent_keys} - selected
        missing = sorted(
            key.to_user_string()
            for key in inputs
            if graph.get(key).is_materializable
            and self.instance.get_latest_materialization_event(key) is None
        )
        if missing:
            raise PipelineError(
                f"cannot run {' + '.join(phases)}: it needs {', '.join(missing)}, never materialized in the "
                f"Dagster instance at {self.dagster_home}; run the phase that produces it first"
            )
        return sorted(selected, key=lambda key: key.to_user_string())

    def preflight(self, phases: Sequence[str] = PHASES) -> PreflightReport:
        """Check what ``phases`` need, cheaply (config, files, data, metrics, MLflow); raise the project's
        error naming what is at fault. Every phase call does this before it starts its Dagster run."""
        tracking = {"parent_run_id": self.mlflow_run_id} if self.mlflow_run_id else {}
        options = MlflowTracking(**tracking).options(self.settings)
        return preflight(self.settings, phases=phases, env={**os.environ, **self._secrets}, tracking=options)

    def _run(self, phases: Sequence[str]) -> dict[str, Any]:
        selection = self._selection(phases)
        try:
            _log.info(self.preflight(phases).summary())
        except FtAssetsError as error:
            raise PipelineError(
                f"{' + '.join(phases)} failed: preflight: {_one_line(f'{type(error).__name__}: {error}')}"
            ) from error
        # Run config, as the launchpad would give it: the run records exactly what it was configured with.
        settings = {"config_path": self.config_path, **self._overrides}
        tracking = {"parent_run_id": self.mlflow_run_id} if self.mlflow_run_id else {}
        run_config = {"resources": {"settings": {"config": settings}, "mlflow": {"config": tracking}}}
        with _environment(self._secrets):
            result = defs.resolve_job_def(fine_tune_pipeline.name).execute_in_process(
                run_config=run_config,
                instance=self.instance,
                asset_selection=sorted(
                    observing_datasets(dg.AssetSelection.assets(*selection)).resolve(
                        defs.resolve_asset_graph()
                    )
                ),
                raise_on_error=False,
                # the assets skip the preflight done here
                tags={PHASES_TAG: ",".join(phases), PREFLIGHT_TAG: ",".join(phases)},
            )
        if not result.success:
            raise PipelineError(f"{' + '.join(phases)} failed: {_failure(result)}")
        assets = {key.to_user_string(): _asset_result(result, key) for key in selection}
        parent = next((a["mlflow_parent_run_id"] for a in assets.values() if a["mlflow_parent_run_id"]), None)
        if self._sharing_parent and parent:
            self.mlflow_run_id = parent
        checks = {
            f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed
            for e in result.get_asset_check_evaluations()
        }
        graph = defs.resolve_asset_graph()
        phase_results = {}
        for phase in phases:
            names = [
                name for name in assets if graph.get(dg.AssetKey(name)).group_name == PHASE_GROUPS[phase]
            ]
            phase_results[phase] = {
                "status": "completed",
                "dagster_run_id": result.run_id,
                "mlflow_parent_run_id": parent,
                "assets": {name: assets[name] for name in names},
                "checks": {name: passed for name, passed in checks.items() if name.split(":")[0] in names},
            }
        return {
            "status": "completed",
            "dagster_run_id": result.run_id,
            "mlflow_parent_run_id": parent,
            "phases": phase_results,
        }


def _asset_result(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, Any]:
    """An asset's value and its MLflow run ids, from the run's output and materialization."""
    name = key.to_user_string()
    metadata = result.asset_materializations_for_node(name)[0].metadata
    return {
        "value": result.output_for_node(name),
        "mlflow_run_id": _plain(metadata.get("mlflow_run_id")),
        "mlflow_parent_run_id": _plain(metadata.get("mlflow_parent_run_id")),
        "mlflow_run_url": _plain(metadata.get("mlflow_run_url")),
    }


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """One line: the failed step and its root error (redacted)."""
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = _root_cause(event.step_failure_data.error)
            # Dagster's message already starts with the class name (traceback.format_exception_only)
            cause = error.message
            if not cause.startswith(f"{error.cls_name}:"):
                cause = f"{error.cls_name}: {cause}"
            return _one_line(f"{event.step_key}: {cause}")
    failures = [
        event.message for event in result.all_events if event.event_type == dg.DagsterEventType.RUN_FAILURE
    ]
    return _one_line(failures[-1] if failures else "the Dagster run did not succeed")
