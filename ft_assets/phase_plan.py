"""What ``[pipeline]`` means: the phases it runs, and why it skips the others.

One reading of ``enable_*`` / ``stop_after_*`` for every path. ``FineTunePipeline`` / ``ft-pipeline``
plan their run with it; a run started any other way (the Dagster UI, the dataset sensor,
``dagster job execute``) that materializes a phase ``[pipeline]`` skips is refused in its first step,
because a Dagster run's asset selection, not the config, decides what it materializes.
"""

from ft_assets.config import PipelineConfig
from ft_assets.errors import FtAssetsError
from ft_assets.jobs import PHASES


class PhasePlanError(FtAssetsError, ValueError):
    """A run materializes a phase that ``[pipeline]`` disables."""


def plan_phases(section: PipelineConfig) -> tuple[list[str], dict[str, str]]:
    """The phases ``section`` runs, in pipeline order, and the reason each other phase is skipped."""
    enabled = {
        "finetuning": section.enable_finetuning,
        "inference": section.enable_inference,
        "evaluation": section.enable_evaluation,
    }
    stop_after = {"finetuning": section.stop_after_finetuning, "inference": section.stop_after_inference}
    run: list[str] = []
    skipped: dict[str, str] = {}
    for index, phase in enumerate(PHASES):
        if enabled[phase]:
            run.append(phase)
        else:
            skipped[phase] = f"[pipeline] enable_{phase} = false"
        if stop_after.get(phase):
            for later in PHASES[index + 1 :]:
                skipped[later] = f"[pipeline] stop_after_{phase} = true"
            break
    return run, skipped


def refuse_skipped_phases(section: PipelineConfig, run_phases: list[str]) -> None:
    """Raise :class:`PhasePlanError` when a run outside ``ft-pipeline`` materializes a phase ``section`` skips."""
    _, skipped = plan_phases(section)
    refused = [phase for phase in run_phases if phase in skipped]
    if refused:
        reasons = "; ".join(f"{phase}: {skipped[phase]}" for phase in refused)
        raise PhasePlanError(
            f"this run materializes {', '.join(refused)}, which the config skips ({reasons}). "
            "[pipeline] enable_*/stop_after_* choose phases for ft-pipeline and FineTunePipeline only; "
            "in the Dagster UI, a sensor run or `dagster job execute`, select the assets or a phase job "
            "(finetuning_job, inference_job, evaluation_job) instead, or set the flag back"
        )
