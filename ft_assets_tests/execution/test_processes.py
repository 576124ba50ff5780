"""Process identities, and phase processes that stop when the process that launched them is killed.

Real processes: a launcher that is SIGKILLed (alone, not its process group, as the OOM killer would) and the
child it started, which must then exit by itself.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from ft_assets.execution.processes import (
    ORCHESTRATOR_ENV,
    ProcessIdentity,
    exit_when_orchestrator_gone,
    watch,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: A launcher that starts a watching child (stderr to a file), prints the child's pid, and waits for it.
LAUNCHER = f"""
import os, subprocess, sys
sys.path.insert(0, {str(PROJECT_ROOT)!r})
from ft_assets.execution.processes import ORCHESTRATOR_ENV, ProcessIdentity
env = {{**os.environ, ORCHESTRATOR_ENV: ProcessIdentity.of(os.getpid()).encode()}}
with open(sys.argv[2], "w") as log:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env, stderr=log)
print(child.pid, flush=True)
child.wait()
"""
#: A phase process: watches its launcher (every 0.2 s) and would otherwise run for two minutes.
PHASE = f"""
import logging, sys, time
sys.path.insert(0, {str(PROJECT_ROOT)!r})
from ft_assets.execution.processes import exit_when_orchestrator_gone
logging.basicConfig()
assert exit_when_orchestrator_gone(interval_s=0.2) is not None
time.sleep(120)
"""


def test_a_process_identity_survives_its_encoding_and_tells_a_reused_pid_apart(
    exited_process: ProcessIdentity,
) -> None:
    me = ProcessIdentity.of(os.getpid())
    assert ProcessIdentity.decode(me.encode()) == ProcessIdentity(me.host, me.pid, round(me.started, 2))
    assert me.host == socket.gethostname() and me.is_alive()
    assert not exited_process.is_alive()
    assert not ProcessIdentity(me.host, me.pid, me.started - 100).is_alive()  # same pid, another process
    for garbage in ("", "host", "host/12", "host/pid/1.0", "/12/1.0", "host/12/start"):
        assert ProcessIdentity.decode(garbage) is None, garbage


def test_watch_calls_back_once_the_process_is_gone(exited_process: ProcessIdentity) -> None:
    gone = threading.Event()
    watch(exited_process, gone.set, interval_s=0.05)
    assert gone.wait(timeout=5)

    still_here = threading.Event()
    watch(ProcessIdentity.of(os.getpid()), still_here.set, interval_s=0.05)
    assert not still_here.wait(timeout=0.5)


def test_nothing_is_watched_without_a_launcher_on_this_host(exited_process: ProcessIdentity) -> None:
    assert exit_when_orchestrator_gone({}) is None
    elsewhere = ProcessIdentity("another-host", exited_process.pid, exited_process.started)
    assert exit_when_orchestrator_gone({ORCHESTRATOR_ENV: elsewhere.encode()}) is None


def test_a_phase_process_exits_when_its_launcher_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "phase.log"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, PHASE, str(log)], stdout=subprocess.PIPE, text=True
    )
    phase: list[psutil.Process] = []
    try:
        assert launcher.stdout is not None
        phase.append(psutil.Process(int(launcher.stdout.readline())))
        time.sleep(1.0)  # the child is up and watching
        assert phase[0].is_running()
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher alone: its child is not signalled
        launcher.wait(timeout=10)
        phase[0].wait(timeout=30)  # not our child: psutil cannot tell its exit status
        assert (
            f"the process that launched this phase (pid {launcher.pid}) is gone: stopping" in log.read_text()
        )
    finally:
        # only these two: the test session has other children (the shared MLflow server)
        launcher.kill()
        for process in phase:
            if process.is_running():
                process.kill()
