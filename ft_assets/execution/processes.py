"""Processes that must not outlive the one that started them.

A phase launched in a subprocess (``launcher`` resource, ``mode = "subprocess"``, with plain python,
``accelerate launch`` or ``torchrun``) would keep training on the GPU if the Dagster process that launched it
were killed: nobody would read its results, the run would be failed, and its rerun would compete with it for
the GPU. So the launcher passes its own identity in :data:`ORCHESTRATOR_ENV`, and every process of the phase
(each rank too) exits once that process is gone (:func:`exit_when_orchestrator_gone`). Its checkpoints stay:
the rerun resumes from them.

A process is known by host, pid and start time (:class:`ProcessIdentity`), so a later process that happens to
reuse the pid is not taken for it. Framework-free: no Dagster import.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil

#: Environment variable naming the process that launched a phase (``host/pid/start time``).
ORCHESTRATOR_ENV = "FT_ASSETS_ORCHESTRATOR"
#: Exit status of a phase process that stopped because its launcher is gone.
EXIT_ORCHESTRATOR_GONE = 75
#: Start times are compared to the precision :meth:`ProcessIdentity.encode` keeps.
_START_TIME_TOLERANCE_S = 0.05

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessIdentity:
    """A process, told apart from a later one that reuses its pid by its start time."""

    host: str
    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time())

    def encode(self) -> str:
        return f"{self.host}/{self.pid}/{self.started:.2f}"

    @classmethod
    def decode(cls, value: str) -> ProcessIdentity | None:
        parts = value.rsplit("/", 2)
        if len(parts) != 3 or not parts[0]:
            return None
        try:
            return cls(parts[0], int(parts[1]), float(parts[2]))
        except ValueError:
            return None

    def is_alive(self) -> bool:
        """Whether the process still runs on this host (a zombie or a reused pid does not count)."""
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(process.create_time() - self.started) <= _START_TIME_TOLERANCE_S
        except psutil.NoSuchProcess:
            return False


def watch(identity: ProcessIdentity, on_gone: Callable[[], object], *, interval_s: float) -> threading.Thread:
    """Call ``on_gone`` (once) from a daemon thread as soon as ``identity`` is found gone."""

    def poll() -> None:
        while identity.is_alive():
            time.sleep(interval_s)
        on_gone()

    thread = threading.Thread(target=poll, name="ft-assets-orchestrator-watch", daemon=True)
    thread.start()
    return thread


def exit_when_orchestrator_gone(
    env: Mapping[str, str] | None = None, *, interval_s: float = 5.0
) -> threading.Thread | None:
    """Exit this process with :data:`EXIT_ORCHESTRATOR_GONE` once the process named in
    :data:`ORCHESTRATOR_ENV` is gone; None (nothing watched) when unset or on another host (a pod)."""
    identity = ProcessIdentity.decode((os.environ if env is None else env).get(ORCHESTRATOR_ENV, ""))
    if identity is None or identity.host != socket.gethostname():
        return None

    def stop() -> None:
        _log.error(
            f"the process that launched this phase (pid {identity.pid}) is gone: stopping; its checkpoints "
            "stay for the rerun to resume from"
        )
        logging.shutdown()
        # not sys.exit: this is a thread, and the main thread is busy training
        os._exit(EXIT_ORCHESTRATOR_GONE)

    return watch(identity, stop, interval_s=interval_s)
