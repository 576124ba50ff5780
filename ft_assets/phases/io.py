"""Atomic publication of outputs: a reader sees the whole result or nothing, never half of it.

Published folders and files get the permissions the process's umask gives any new file (``0755``/``0644``
under umask 022): ``tempfile`` creates its scratch folders and files owner-only, which would otherwise make a
shared model cache or a report unreadable to a teammate or to a pod running as another user.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ft_assets.config_sections import ConfigError


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it, which
    would briefly give files created by other threads the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give ``path`` (made by ``tempfile``, owner-only) the mode a plain ``mkdir``/``open`` would."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a scratch directory beside ``final`` that is renamed to ``final`` only if the block succeeds.

    A rerun replaces an earlier ``final`` whole (never merges into it); a failure removes the scratch.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    apply_umask(scratch)
    try:
        yield scratch
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            final.rename(retired / final.name)
            scratch.rename(final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            scratch.rename(final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside ``final``; it replaces ``final`` (``os.replace``) only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.partial-", dir=final.parent)
    try:
        apply_umask(Path(tmp))
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as pretty JSON atomically."""
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    return path


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root: Path, patterns: tuple[str, ...] = ("*",)) -> str:
    """Hex SHA-256 over the relative names and bytes of the files under ``root`` matching ``patterns``."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in root.rglob(pattern) if p.is_file()})
    for file in files:
        digest.update(str(file.relative_to(root)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def check_writable_folder(folder: Path, key: str) -> None:
    """Preflight of an output folder (``key``: the config key naming it): it can be created and written, as
    its nearest existing ancestor is a writable directory. Nothing is created: preflight leaves no trace."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key} = {str(folder)!r}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} = {str(folder)!r}: {existing} is not writable")
