"""``ft-pipeline --sweep``: run the configured sweep against a persistent Dagster instance, resuming.

1. expand ``[sweep]`` and build every candidate's settings, then preflight every candidate: an invalid
   candidate stops the sweep before anything is trained;
2. add the candidates' names to the ``sweep_candidates`` partitions (the UI shows them from then on);
3. materialize the shared ``base_model`` + ``base_inference_results`` once, unless the latest base
   inference came from a sweep run of the same base config; its MLflow phase run is a child of the sweep's
   run;
4. run ``sweep_candidate_job`` for each candidate not done for the current config (one Dagster run per
   partition, in this process, one after another: the GPU steps would queue on the ``gpu`` pool anyway).
   A failed candidate does not stop the others; the sweep then fails naming it, and the next launch runs
   only the candidates still missing;
5. materialize ``sweep_leaderboard`` and ``sweep_promoted_model`` (the winner, registered when
   ``[evaluator] register_model = true`` and its gates pass).

From the UI the same sweep is a backfill of the ``sweep`` group over the ``sweep_candidates`` partitions
(the daemon of ``make ui`` runs it), after step 2 and with the base assets materialized.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dagster as dg

from ft_assets.assets.common import PREFLIGHT_TAG
from ft_assets.definitions import defs
from ft_assets.jobs import PHASES, fine_tune_pipeline
from ft_assets.pipeline import FineTunePipeline, PipelineError, _environment, _failure
from ft_assets.resources.tracking import MlflowTracking
from ft_assets.sweeps.assets import (
    SweepError,
    completed_candidates,
    sweep_candidate_job,
    sweep_candidates,
    sweep_leaderboard_job,
)
from ft_assets.sweeps.candidates import SweepPlan, plan_sweep, settings_fingerprint

#: Dagster run tags of a sweep's runs: the sweep, and (on the base run) the base config's fingerprint.
SWEEP_TAG = "ft_assets/sweep_id"
BASE_FINGERPRINT_TAG = "ft_assets/sweep_base_fingerprint"
_log = logging.getLogger(__name__)


def register_candidates(instance: dg.DagsterInstance, plan: SweepPlan) -> list[str]:
    """Add the sweep's candidate names missing from the ``sweep_candidates`` partitions; returns them."""
    assert sweep_candidates.name is not None
    known = set(instance.get_dynamic_partitions(sweep_candidates.name))
    new = [name for name in plan.names if name not in known]
    if new:
        instance.add_dynamic_partitions(sweep_candidates.name, new)
    return new


def _base_is_current(instance: dg.DagsterInstance, fingerprint: str) -> bool:
    event = instance.get_latest_materialization_event(dg.AssetKey("base_inference_results"))
    run = instance.get_run_by_id(event.run_id) if event else None
    return bool(run and run.tags.get(BASE_FINGERPRINT_TAG) == fingerprint)


class SweepRunner:
    """The steps of the module docstring for the sweep of ``pipeline``'s config."""

    def __init__(self, pipeline: FineTunePipeline) -> None:
        self.pipeline = pipeline
        self.plan = plan_sweep(pipeline.settings, source=pipeline.config_path)
        settings = {"config_path": pipeline.config_path, **pipeline._overrides}
        self.run_config = {"resources": {"settings": {"config": settings}}}

    def preflight(self) -> None:
        """Preflight the base config and every candidate (all phases); raise naming the candidate at fault."""
        from ft_assets.phase_plan import plan_phases
        from ft_assets.preflight import preflight

        _, skipped = plan_phases(self.pipeline.settings.pipeline)
        if skipped:
            reasons = "; ".join(f"{phase}: {reason}" for phase, reason in skipped.items())
            raise PipelineError(
                f"a sweep runs every phase of every candidate, but the config skips some ({reasons})"
            )
        env = {**os.environ, **self.pipeline._secrets}
        for name, settings in self.plan.settings.items():
            try:
                preflight(settings, phases=PHASES, env=env, tracking=MlflowTracking().options(settings))
            except Exception as error:
                raise PipelineError(
                    f"sweep candidate {name}: preflight: {' '.join(str(error).split())}"
                ) from error

    def _execute(
        self, job: Any, mlflow_parent: str | None = None, **kwargs: Any
    ) -> dg.ExecuteInProcessResult:
        tags = {SWEEP_TAG: self.plan.sweep_id, PREFLIGHT_TAG: ",".join(PHASES), **kwargs.pop("tags", {})}
        tracking = {"mlflow": {"config": {"parent_run_id": mlflow_parent}}} if mlflow_parent else {}
        with _environment(self.pipeline._secrets):
            return defs.resolve_job_def(job.name).execute_in_process(
                run_config={"resources": {**self.run_config["resources"], **tracking}},
                instance=self.pipeline.instance,
                raise_on_error=False,
                tags=tags,
                **kwargs,
            )

    def run(self) -> dict[str, Any]:
        """Steps 1-5; returns what ran, what was already done, and the leaderboard's value."""
        self.preflight()
        instance = self.pipeline.instance
        register_candidates(instance, self.plan)
        base_fingerprint = settings_fingerprint(self.pipeline.settings)
        base_run = None
        if not _base_is_current(instance, base_fingerprint):
            from ft_assets.sweeps.tracking import reopen_sweep_run, sweep_run

            with _environment(self.pipeline._secrets):
                options = MlflowTracking().options(self.pipeline.settings)
                parent = sweep_run(options, self.plan, _log)  # the base inference is a child of the sweep run
            result = self._execute(
                fine_tune_pipeline,
                mlflow_parent=parent,
                asset_selection=[dg.AssetKey("base_model"), dg.AssetKey("base_inference_results")],
                tags={BASE_FINGERPRINT_TAG: base_fingerprint},
            )
            if not result.success:
                raise PipelineError(f"sweep {self.plan.name}: the base model run failed: {_failure(result)}")
            if parent:
                with _environment(self.pipeline._secrets):
                    reopen_sweep_run(options, parent, _log)
            base_run = result.run_id
        done = completed_candidates(instance, self.plan)
        ran: dict[str, str] = {}
        failed: dict[str, str] = {}
        for name in self.plan.names:
            if name in done:
                continue
            result = self._execute(sweep_candidate_job, partition_key=name)
            ran[name] = result.run_id
            if not result.success:
                failed[name] = _failure(result)
                _log.warning(f"sweep candidate {name} failed: {failed[name]}")
        if failed:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            raise SweepError(
                f"sweep {self.plan.name}: {len(failed)} of {len(self.plan.names)} candidates failed ({reasons}); "
                "run the sweep again to retry only the candidates not done"
            )
        board = self._execute(sweep_leaderboard_job)
        if not board.success:
            raise PipelineError(f"sweep {self.plan.name}: the leaderboard failed: {_failure(board)}")
        return {
            "sweep_id": self.plan.sweep_id,
            "candidates": self.plan.names,
            "ran": ran,
            "already_done": sorted(done),
            "base_run": base_run,
            "leaderboard_run": board.run_id,
            "leaderboard": board.output_for_node("sweep_leaderboard"),
            "promotion": board.output_for_node("sweep_promoted_model"),
        }


def run_sweep(pipeline: FineTunePipeline) -> dict[str, Any]:
    """Run (or resume) the sweep of ``pipeline``'s config; see the module docstring."""
    return SweepRunner(pipeline).run()


def sweep_summary(results: dict[str, Any]) -> list[str]:
    """Lines for the terminal: what ran, the leaderboard and where it is."""
    from ft_assets.sweeps.leaderboard import markdown_table

    board = results["leaderboard"]
    lines = [
        f"sweep {results['sweep_id']}: {len(results['candidates'])} candidates; ran {len(results['ran'])}"
        + (f", already done: {', '.join(results['already_done'])}" if results["already_done"] else ""),
        markdown_table(board),
        f"leaderboard: {board['json_path']} and {board['xlsx_path']}",
    ]
    if board.get("mlflow_sweep_run_id"):
        lines.append(f"MLflow sweep run {board['mlflow_sweep_run_id']}")
    promotion = results["promotion"]
    if promotion.registered:
        lines.append(
            f"promoted {board['winner']}: {promotion.name} version {promotion.version} ({promotion.alias})"
        )
    elif promotion.failed_gates:
        lines.append(f"not promoted: gates failed: {', '.join(promotion.failed_gates)}")
    return lines
