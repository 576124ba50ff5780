"""Runs whose process was killed: mark them failed and give back the ``gpu`` pool slots they hold.

A run whose orchestrating process dies (SIGKILL, the OOM killer, a closed laptop) stays ``STARTED`` in the
Dagster instance and keeps the pool slots its steps claimed, so every later GPU step of the instance waits
("blocked by limit for pool gpu"). Dagster's run monitoring cannot see it: runs of ``dagster job execute``,
``ft-pipeline`` and ``execute_in_process`` have no run launcher to ask, and the default launcher of the UI
cannot check its workers' health.

So each GPU step records the process that orchestrates its run (host, pid and the process's start time,
which tells a reused pid apart) in the run tag :data:`ORCHESTRATOR_TAG`, and :func:`fail_orphaned_runs`
fails every unfinished run of this host whose recorded process is gone, then frees its slots. It runs

* when the ``launcher`` resource is set up, i.e. when a run with GPU steps starts (before any of its steps
  claims a slot: the in-process executor, the default, sets resources up first), and
* every minute in :data:`orphaned_run_sensor`, wherever the Dagster daemon runs (``make ui``), which also
  covers the multiprocess executor.

Runs recorded on another host are left alone: their process cannot be checked from here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import dagster as dg

from ft_assets.execution.processes import ProcessIdentity

#: Run tag: ``<host>/<pid>/<process start time>`` of the process that orchestrates the run.
ORCHESTRATOR_TAG = "ft_assets/orchestrator"
#: Statuses of a run whose process should still be alive.
UNFINISHED_STATUSES = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
#: Engine-event messages with which the in-process and multiprocess executors name their process.
_EXECUTOR_START_MESSAGES = ("Executing steps in process", "Executing steps using multiprocess executor")
SENSOR_INTERVAL_S = 60


def _orchestrator_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid the run's executor reported, when it is this process or its parent (so on this host)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    for record in records:
        event = record.event_log_entry
        if event.dagster_event is None or not event.dagster_event.message:
            continue
        if not event.dagster_event.message.startswith(_EXECUTOR_START_MESSAGES):
            continue
        pid = event.dagster_event.engine_event_data.metadata.get("pid")
        pid = int(getattr(pid, "value", pid)) if pid is not None else None
        return pid if pid in (os.getpid(), os.getppid()) else None
    return None


def record_orchestrator(context: dg.AssetExecutionContext) -> None:
    """Tag the step's run with its orchestrating process, once; a no-op for executors that run steps away
    from the orchestrator (Celery, Kubernetes), whose run launchers watch the run themselves."""
    instance, run_id = context.instance, context.run.run_id
    run = instance.get_run_by_id(run_id)
    if run is None or ORCHESTRATOR_TAG in run.tags:
        return
    pid = _orchestrator_pid(instance, run_id)
    if pid is not None:
        instance.add_run_tags(run_id, {ORCHESTRATOR_TAG: ProcessIdentity.of(pid).encode()})


def fail_orphaned_runs(instance: dg.DagsterInstance, log: Callable[[str], object] | None = None) -> list[str]:
    """Fail the unfinished runs of this host whose orchestrating process is gone, free their pool slots,
    and return their run ids."""
    host = socket.gethostname()
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED_STATUSES)):
        identity = ProcessIdentity.decode(run.tags.get(ORCHESTRATOR_TAG, ""))
        if identity is None or identity.host != host or identity.is_alive():
            continue
        message = (
            f"the run's process (pid {identity.pid} on {identity.host}) is gone: it was killed or crashed. "
            "ft-assets marked the run failed and freed its pool slots; rerun it (training resumes from its "
            "last checkpoint)"
        )
        instance.report_run_failed(run, message=message)
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        if log is not None:
            log(f"run {run.run_id}: {message}")
        failed.append(run.run_id)
    return failed


@dg.sensor(
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails runs whose process was killed and frees the gpu pool slots they still hold.",
)
def orphaned_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Every minute: :func:`fail_orphaned_runs` on this instance."""
    failed = fail_orphaned_runs(context.instance, context.log.warning)
    if failed:
        return dg.SkipReason(
            f"failed {len(failed)} orphaned run(s) and freed their slots: {', '.join(failed)}"
        )
    return dg.SkipReason("no orphaned runs")
