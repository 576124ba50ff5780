"""Small helpers shared by the asset modules: preflight of a run, per-run output folders and secrets from
the environment."""

import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from ft_assets.config import Settings
from ft_assets.jobs import PHASE_GROUPS
from ft_assets.phase_plan import refuse_skipped_phases
from ft_assets.resources.tracking import MlflowTracking

#: Code version of the phase logic; bump when outputs for the same inputs would change.
PHASE_CODE_VERSION = "1"
#: Dagster run tag: the pipeline phases preflight has checked for the run (``finetuning,inference``).
PREFLIGHT_TAG = "ft_assets/preflight"


#: Which pipeline phase an asset belongs to (None: none); by default, its asset group's phase.
PhaseOf = Callable[[dg.AssetKey], str | None]


def run_phases(context: dg.AssetExecutionContext, phase_of: PhaseOf | None = None) -> list[str]:
    """The pipeline phases whose assets this run materializes, in pipeline order."""
    layer = context.job_def.asset_layer
    keys = set(layer.selected_asset_keys)
    if context.run.asset_selection:  # empty when the run is not a subset of its job
        keys &= context.run.asset_selection
    group_phase = {group: phase for phase, group in PHASE_GROUPS.items()}
    phases = {
        phase_of(key) if phase_of else group_phase.get(layer.asset_graph.get(key).group_name) for key in keys
    }
    return [phase for phase in PHASE_GROUPS if phase in phases]


def preflight_run(
    context: dg.AssetExecutionContext,
    settings: Settings,
    mlflow: MlflowTracking,
    phase_of: PhaseOf | None = None,
) -> None:
    """Preflight (:func:`ft_assets.preflight.preflight`) every phase of this run not checked yet.

    The first phase asset of a run checks them all, so a bad evaluation config stops the run before hours
    of training, not after them; ``FineTunePipeline`` checks them before it starts the run. The run tag
    :data:`PREFLIGHT_TAG` records what was checked, so each phase is checked once per run.
    """
    from ft_assets.preflight import preflight

    instance, run_id = context.instance, context.run.run_id
    run = instance.get_run_by_id(run_id)
    checked = set((run.tags.get(PREFLIGHT_TAG, "") if run else "").split(","))
    pending = [phase for phase in run_phases(context, phase_of) if phase not in checked]
    if not pending:
        return
    refuse_skipped_phases(settings.pipeline, pending)
    report = preflight(settings, phases=pending, tracking=mlflow.options(settings))
    context.log.info(report.summary())
    done = [phase for phase in PHASE_GROUPS if phase in checked or phase in pending]
    instance.add_run_tags(run_id, {PREFLIGHT_TAG: ",".join(done)})


def run_output_dir(settings: Settings, asset_name: str, context: dg.AssetExecutionContext) -> Path:
    """``<artifacts_root>/<asset>/<dagster run id>``: one folder per run, so reruns never mix outputs."""
    root = settings.artifacts_root.resolve()
    target = (root / asset_name / context.run.run_id).resolve()
    if root not in target.parents:
        raise ValueError(f"output path {target} escapes the artifacts root {root}")
    return target


def secret(name: str) -> str | None:
    """A secret from the environment (set there by the user or by ``ft-pipeline --hf-key/--openai-key``)."""
    return os.environ.get(name) or None
