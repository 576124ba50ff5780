"""Training checkpoints: where they live, which job they belong to, which one to resume, when to prune
the abandoned ones, and one training at a time per checkpoint folder.

A training job's identity is its fingerprint (:func:`training_fingerprint`): the same fingerprint means
its checkpoints under ``<checkpoint_root>/<fingerprint>`` can be resumed.

Two trainings with the same fingerprint (possible as soon as the ``gpu`` pool allows two steps at once)
would share that folder: one would resume the other's unfinished checkpoints, and the first to publish
would delete the folder under the other. So a training holds an exclusive ``flock`` on
``.<checkpoint_root name>.locks/<fingerprint>.lock`` beside the checkpoint root from choosing its resume
point until it has published; a second one waits (saying for whom) and then resumes or starts cleanly.

The lock files live beside the checkpoint root, not in it, so that it holds checkpoint folders only, under
a dot name, which readers of the asset folder skip like any temporary name. They are never deleted:
removing a file another process is waiting on would let a third process lock a new file of the same name
while the second still holds the old one. An ``flock`` ends with its process, so a killed training never
leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from ft_assets.config import FineTunerConfig, Settings
from ft_assets.phases.models import ResolvedModel


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


#: Config keys that do not change what is trained, so a change of them keeps resumable checkpoints.
_NON_TRAINING_KEYS = {
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "push_to_hub",
    "hub_model_id",
    "hub_private",
    "merge_adapter",
    "on_bad_rows",
    "device",
}


def checkpoint_root(settings: Settings) -> Path:
    """Where training keeps its checkpoints, one folder per training fingerprint."""
    return settings.artifacts_root / "fine_tuned_model" / "checkpoints"


def training_fingerprint(
    config: FineTunerConfig,
    base: ResolvedModel,
    data_versions: Mapping[str, str],
    chat_template: tuple[str | None, str | None] | None = None,
) -> str:
    """Identity of a training job: same fingerprint -> its checkpoints can be resumed.

    Everything that changes what is trained counts by content: the config values, the base model's and the
    data's content hashes, and the resolved ``chat_template`` (its text and end-of-turn token), not the
    ``chat_template`` key's file name: an edited template file must not resume the old template's checkpoints.
    """
    relevant = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NON_TRAINING_KEYS}
    if config.chat_template is not None:
        relevant["chat_template"] = list(chat_template) if chat_template is not None else None
    payload = json.dumps(
        {"config": relevant, "base": base.content_hash, "data": dict(data_versions)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint directory, None for a partial one.

    The trainer writes ``trainer_state.json`` last, and a crash can cut that write short, so the state
    must parse and name the directory's own step.
    """
    suffix = path.name.removeprefix("checkpoint-")
    if not suffix.isdigit():
        return None
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return int(suffix) if state.get("global_step") == int(suffix) else None


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` under ``checkpoint_dir`` (None when there is none)."""
    steps = {path: checkpoint_step(path) for path in checkpoint_dir.glob("checkpoint-*")}
    complete = {path: step for path, step in steps.items() if step is not None}
    return max(complete, key=complete.__getitem__, default=None)


def _newest_change(folder: Path) -> float:
    """The newest modification time of ``folder`` and of anything in it."""
    times = [folder.stat().st_mtime]
    for parent, _, files in os.walk(folder):
        times.append(Path(parent).stat().st_mtime)
        times.extend((Path(parent) / name).stat().st_mtime for name in files)
    return max(times)


def prune_stale_checkpoints(
    checkpoint_root: Path, *, keep: str, max_age_days: float, now: float | None = None
) -> list[Path]:
    """Remove the checkpoint folders of other training jobs (fingerprints) untouched for ``max_age_days``.

    A job's checkpoints are removed when it publishes; these are left by runs that failed or were killed
    and never resumed because their config or data changed since. A job still training writes a checkpoint
    every ``save_steps``, so its folder is never that old. Returns the removed folders.
    """
    if not checkpoint_root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_age_days * 86400
    removed = []
    for folder in sorted(checkpoint_root.iterdir()):
        if folder.name == keep or not folder.is_dir():
            continue
        try:
            stale = _newest_change(folder) < cutoff
        except FileNotFoundError:  # removed meanwhile, by its own job publishing
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
