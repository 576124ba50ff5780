"""The user-level cache shared by every project on the machine (converted and built embedded models).

Laid out as the Hugging Face cache is: ``$FT_ASSETS_CACHE`` when set, else ``$XDG_CACHE_HOME/ft-assets``,
else ``~/.cache/ft-assets``; ``[pipeline] model_cache_dir`` moves the models elsewhere for one config.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "FT_ASSETS_CACHE"


def user_cache_dir() -> Path:
    """``$FT_ASSETS_CACHE``, ``$XDG_CACHE_HOME/ft-assets`` or ``~/.cache/ft-assets``, in that order."""
    if configured := os.environ.get(CACHE_ENV):
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ft-assets"


def default_model_cache_dir() -> Path:
    """Where embedded base models are cached unless ``[pipeline] model_cache_dir`` says otherwise."""
    return user_cache_dir() / "models"


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the block: one process (or
    thread) at a time fills a cache entry, the others wait and then find it filled."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
