"""`[pipeline]` flags mean one thing in every path: ft-pipeline skips, any other run refuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ft_assets import definitions as code_location
from ft_assets.config import load_settings
from ft_assets.phase_plan import PhasePlanError, refuse_skipped_phases
from ft_assets_tests.helpers import pipeline_resources


def test_a_dagster_run_of_a_disabled_phase_is_refused_in_its_first_step(
    write_config: Callable[..., Path],
) -> None:
    config = write_config({"pipeline": {"enable_finetuning": False}})
    job = code_location.defs.resolve_job_def("finetuning_job")
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), resources=pipeline_resources(config), raise_on_error=False
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["base_model"]
    error = failures[0].step_failure_data.error
    while error.cause is not None:  # Dagster wraps the asset's own exception
        error = error.cause
    message = error.message
    assert "PhasePlanError" in message
    assert "[pipeline] enable_finetuning = false" in message
    assert "finetuning_job, inference_job, evaluation_job" in message


@pytest.mark.parametrize(
    ("flags", "phases", "refused"),
    [
        (
            {"stop_after_finetuning": True},
            ["finetuning", "inference"],
            "inference: [pipeline] stop_after_finetuning",
        ),
        ({"enable_evaluation": False}, ["evaluation"], "evaluation: [pipeline] enable_evaluation = false"),
    ],
)
def test_refusal_names_each_skipped_phase_and_its_flag(
    write_config: Callable[..., Path], flags: dict, phases: list[str], refused: str
) -> None:
    settings = load_settings(write_config({"pipeline": flags}))
    with pytest.raises(PhasePlanError, match=r"\(" + refused.replace("[", r"\[").replace("]", r"\]")):
        refuse_skipped_phases(settings.pipeline, phases)


def test_a_run_of_enabled_phases_only_is_accepted(write_config: Callable[..., Path]) -> None:
    settings = load_settings(write_config({"pipeline": {"enable_finetuning": False}}))
    refuse_skipped_phases(settings.pipeline, ["inference", "evaluation"])
