"""One training at a time per checkpoint folder.

Two trainings with the same fingerprint (same base model, data and training config: possible as soon as
the ``gpu`` pool allows two steps at once) would share ``<checkpoint_root>/<fingerprint>``: one would resume
the other's unfinished checkpoints, and the first to publish would delete the folder under the other. So a
training holds an exclusive ``flock`` on ``.<checkpoint_root name>.locks/<fingerprint>.lock`` beside the
checkpoint root from choosing its resume point until it has published; a second one waits (saying for whom)
and then resumes or starts cleanly.

The lock files live beside the checkpoint root, not in it, so that it holds checkpoint folders only, under a
dot name, which readers of the asset folder skip like any temporary name. They are never deleted: removing a file another process is waiting on would let a third process
lock a new file of the same name while the second still holds the old one. An ``flock`` ends with its
process, so a killed training never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Protocol


class _Log(Protocol):
    def info(self, msg: str) -> object: ...

    def warning(self, msg: str) -> object: ...


def lock_path(checkpoint_root: Path, fingerprint: str) -> Path:
    """The lock file of the checkpoint folder ``<checkpoint_root>/<fingerprint>``."""
    return checkpoint_root.with_name(f".{checkpoint_root.name}.locks") / f"{fingerprint}.lock"


class CheckpointLock:
    """An exclusive lock on one fingerprint's checkpoint folder, held until :meth:`release`."""

    def __init__(self, checkpoint_root: Path, fingerprint: str, log: _Log) -> None:
        self.path = lock_path(checkpoint_root, fingerprint)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
            log.warning(
                f"waiting for {holder} to finish the training with the same fingerprint ({self.path}); "
                "it shares this one's checkpoint folder"
            )
            started = time.monotonic()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            log.info(f"checkpoint lock {self.path} acquired after {time.monotonic() - started:.0f} s")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)

    def release(self) -> None:
        """Let the next training with this fingerprint go (also done when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        # a training that raised releases the lock once its frame is gone, not only when the process ends
        self.release()
