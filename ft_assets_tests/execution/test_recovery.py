"""Runs whose process was killed: found by their recorded process, failed, and their pool slots freed.

Real Dagster instances with the project's dagster.yaml (the ``gpu`` pool of one slot), real processes that
have exited; the end-to-end case (``dagster job execute`` SIGKILLed, then a rerun that is not blocked) is in
``reliability/test_faults.py``.
"""

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.utils import make_new_run_id

from ft_assets.execution.launcher import ComputeLauncher
from ft_assets.execution.processes import ProcessIdentity
from ft_assets.execution.recovery import (
    ORCHESTRATOR_TAG,
    fail_orphaned_runs,
    orphaned_run_sensor,
    record_orchestrator,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POOL = "gpu"


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A sqlite instance configured like the project's (``gpu`` pool limit 1)."""
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text(encoding="utf-8"))
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=config) as test_instance:
        yield test_instance


def started_run(instance: dg.DagsterInstance, identity: ProcessIdentity | None, *, hold_slot: bool) -> str:
    """A STARTED run tagged with ``identity``, optionally holding a ``gpu`` slot as a training step would."""
    run_id = make_new_run_id()
    tags = {ORCHESTRATOR_TAG: identity.encode()} if identity else {}
    instance.add_run(
        dg.DagsterRun(job_name="finetuning_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags)
    )
    if hold_slot:
        instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)  # as the executor does
        claim = instance.event_log_storage.claim_concurrency_slot(POOL, run_id, "fine_tuned_model")
        assert claim.is_claimed, "the pool slot is taken already"
    return run_id


def slot_holders(instance: dg.DagsterInstance) -> set[str]:
    return instance.event_log_storage.get_concurrency_info(POOL).active_run_ids


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


def test_only_runs_whose_process_is_gone_from_this_host_are_failed_and_their_slot_freed(
    instance: dg.DagsterInstance, exited_process: ProcessIdentity
) -> None:
    me = ProcessIdentity.of(os.getpid())
    orphan = started_run(instance, exited_process, hold_slot=True)
    alive = started_run(instance, me, hold_slot=False)
    reused_pid = started_run(instance, ProcessIdentity(me.host, me.pid, me.started - 100), hold_slot=False)
    elsewhere = started_run(instance, ProcessIdentity("another-host", 1, 0.0), hold_slot=False)
    untagged = started_run(instance, None, hold_slot=False)
    assert slot_holders(instance) == {orphan}
    logged: list[str] = []

    assert sorted(fail_orphaned_runs(instance, logged.append)) == sorted([orphan, reused_pid])

    assert status(instance, orphan) == status(instance, reused_pid) == dg.DagsterRunStatus.FAILURE
    for run_id in (alive, elsewhere, untagged):
        assert status(instance, run_id) == dg.DagsterRunStatus.STARTED
    assert slot_holders(instance) == set()
    failure = instance.get_records_for_run(orphan, of_type=dg.DagsterEventType.RUN_FAILURE).records
    assert f"pid {exited_process.pid} on {exited_process.host}" in failure[0].event_log_entry.message
    assert len(logged) == 2 and logged[0].startswith("run ")
    assert fail_orphaned_runs(instance) == []  # a failed run is not failed again


def test_the_sensor_fails_orphaned_runs(
    instance: dg.DagsterInstance, exited_process: ProcessIdentity
) -> None:
    orphan = started_run(instance, exited_process, hold_slot=True)
    result = orphaned_run_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and orphan in (result.skip_message or "")
    assert status(instance, orphan) == dg.DagsterRunStatus.FAILURE and slot_holders(instance) == set()
    quiet = orphaned_run_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(quiet, dg.SkipReason) and quiet.skip_message == "no orphaned runs"


@dg.asset(pool=POOL)
def gpu_step(context: dg.AssetExecutionContext, launcher: ComputeLauncher) -> str:
    """A step of the ``gpu`` pool that records its run's process, as the GPU assets do."""
    record_orchestrator(context)
    return launcher.mode


@pytest.mark.timeout(300)
def test_a_new_run_is_not_blocked_by_the_slot_of_a_killed_one(
    instance: dg.DagsterInstance, exited_process: ProcessIdentity
) -> None:
    orphan = started_run(instance, exited_process, hold_slot=True)
    outcome: list[dg.ExecuteInProcessResult] = []
    # in a thread: were the slot not freed, the run would wait for it forever
    worker = threading.Thread(
        target=lambda: outcome.append(
            dg.materialize([gpu_step], instance=instance, resources={"launcher": ComputeLauncher()})
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=240)
    assert not worker.is_alive(), "the run is still waiting for the killed run's gpu slot"
    (result,) = outcome
    assert result.success
    assert status(instance, orphan) == dg.DagsterRunStatus.FAILURE
    # the new run names this process as its orchestrator (the in-process executor runs steps here)
    tag = instance.get_run_by_id(result.run_id).tags[ORCHESTRATOR_TAG]
    assert ProcessIdentity.decode(tag) == ProcessIdentity.decode(ProcessIdentity.of(os.getpid()).encode())
