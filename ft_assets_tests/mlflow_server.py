"""A real ``mlflow server`` for tests: 127.0.0.1, a free port, sqlite backend and artifacts in a folder.

Starting one takes ~20 s, so suites share a single server per test process through
:func:`shared_mlflow_server` (stopped when the process exits), which the session fixture
``mlflow_server`` in conftest.py returns.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120.0


@dataclass
class MlflowServer:
    """A running server; :attr:`url` is its tracking URI."""

    url: str
    root: Path
    backend_db: Path
    artifacts_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def stop(self) -> None:
        """Stop the server and its workers (they share its process group)."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(root: Path, timeout_s: float = START_TIMEOUT_S) -> MlflowServer:
    """Start ``mlflow server`` with its store under ``root`` and wait until ``GET /health`` answers."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    backend_db, artifacts_dir = root / "mlflow.db", root / "mlartifacts"
    artifacts_dir.mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{backend_db}",
        "--artifacts-destination", str(artifacts_dir),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    # Credentials of the calling test must not reach the server process.
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(var, None)
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", root, backend_db, artifacts_dir, process)
    deadline = time.monotonic() + timeout_s
    while not _healthy(server.url):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = server.log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"mlflow server on port {port} did not come up (exit {process.poll()}):\n{tail}"
            )
        time.sleep(0.25)
    return server


@contextmanager
def running_mlflow_server(root: Path) -> Iterator[MlflowServer]:
    """A server for the duration of the block."""
    server = start_mlflow_server(root)
    try:
        yield server
    finally:
        server.stop()


_shared: MlflowServer | None = None


def shared_mlflow_server() -> MlflowServer:
    """The one server of this test process, started on first use, stopped (and its folder removed) at exit."""
    global _shared
    if _shared is None or _shared.process.poll() is not None:
        root = Path(tempfile.mkdtemp(prefix="ft-assets-mlflow-"))
        _shared = start_mlflow_server(root)
        # atexit runs last-registered first: stop the server, then remove its folder.
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        atexit.register(_shared.stop)
    return _shared
