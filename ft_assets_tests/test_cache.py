"""The user-level model cache: where it is, and that concurrent first use builds a model once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from ft_assets.cache import CACHE_ENV, default_model_cache_dir, user_cache_dir
from ft_assets.config import build_settings
from ft_assets.config_sections import EMBEDDED_TINY
from ft_assets.phases import models


def test_cache_location_follows_the_hugging_face_conventions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "ft-assets"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "ft-assets"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_model_cache_dir() == tmp_path / "mine" / "models"
    # one cache for every project; [pipeline] model_cache_dir still moves it for one config
    assert build_settings({}, base_dir=tmp_path / "a").model_cache_dir == tmp_path / "mine" / "models"
    moved = build_settings({"pipeline": {"model_cache_dir": "models"}}, base_dir=tmp_path / "b")
    assert moved.model_cache_dir == tmp_path / "b" / "models"


def test_concurrent_first_use_builds_the_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Path] = []
    original = models.build_tiny_model

    def counted(target: Path, seed: int = 0) -> None:
        builds.append(target)
        original(target, seed)

    monkeypatch.setattr(models, "build_tiny_model", counted)
    results: list[Any] = []

    def resolve() -> None:
        results.append(models.resolve_base_model(EMBEDDED_TINY, cache_dir=tmp_path, base_dir=tmp_path))

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(results) == 3
    assert len({(r.path, r.content_hash) for r in results}) == 1
    # published whole: nothing half-built is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny-llama-v1.lock", "tiny-llama-v1"]
