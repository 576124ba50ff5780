"""Output folders: the preflight check that they can be created and written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ft_assets.config import ConfigError
from ft_assets.phases.io import check_writable_folder


def test_check_writable_folder_creates_nothing_and_names_the_key(tmp_path: Path) -> None:
    target = tmp_path / "künftig" / "artefakte"
    check_writable_folder(target, "[pipeline] artifacts_root")
    assert not (tmp_path / "künftig").exists()
    blocker = tmp_path / "datei"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as raised:
        check_writable_folder(blocker / "below", "[pipeline] artifacts_root")
    below = str(blocker / "below")
    assert str(raised.value) == (
        f"[pipeline] artifacts_root = {below!r}: {blocker} is a file, so the folder cannot be created"
    )
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if os.access(locked, os.W_OK):  # root may write anywhere: nothing to refuse
            check_writable_folder(locked / "x", "[pipeline] model_cache_dir")
            return
        with pytest.raises(ConfigError, match=r"^\[pipeline\] model_cache_dir = .*is not writable$"):
            check_writable_folder(locked / "x", "[pipeline] model_cache_dir")
    finally:
        locked.chmod(0o700)
