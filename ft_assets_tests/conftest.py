"""Shared fixtures: offline environment, the tiny embedded model, and per-test pipeline configs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAGAS_DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",
}.items():
    os.environ.setdefault(_name, _value)
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "FT_ASSETS_CONFIG"):
    os.environ.pop(_name, None)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CI_CONFIG = PROJECT_ROOT / "config" / "ci.toml"


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user-level cache (``$FT_ASSETS_CACHE``) of this session: tests never write into ~/.cache, and
    subprocesses they start inherit it."""
    from ft_assets.cache import CACHE_ENV

    root = tmp_path_factory.mktemp("ft_assets_cache")
    os.environ[CACHE_ENV] = str(root)
    return root


@pytest.fixture(scope="session")
def model_cache(user_cache: Path) -> Path:
    """One cache of embedded base models for the whole session: the default one of configs that set no
    ``[pipeline] model_cache_dir``, so the tiny model is built once whichever way a test names it."""
    from ft_assets.cache import default_model_cache_dir

    return default_model_cache_dir()


@pytest.fixture(scope="session")
def tiny_model(model_cache: Path) -> Any:
    """The embedded tiny Llama (random weights, BPE tokenizer trained offline, ChatML template)."""
    from ft_assets.config_sections import EMBEDDED_TINY
    from ft_assets.phases.models import resolve_base_model

    return resolve_base_model(EMBEDDED_TINY, cache_dir=model_cache, base_dir=PROJECT_ROOT)


@pytest.fixture
def write_config(tmp_path: Path, model_cache: Path) -> Callable[..., Path]:
    """Write a TOML config: config/ci.toml with outputs and MLflow under tmp_path, plus overrides."""
    from ft_assets.config import relocated_config

    def write(overrides: dict[str, Any] | None = None, name: str = "pipeline.toml") -> Path:
        return relocated_config(
            CI_CONFIG,
            tmp_path / name,
            outputs_root=tmp_path,
            model_cache_dir=model_cache,
            overrides=overrides,
        )

    return write


@pytest.fixture(scope="session")
def mlflow_server() -> Any:
    """One real `mlflow server` on 127.0.0.1 (sqlite backend, temp artifact root) for the whole session."""
    from ft_assets_tests.mlflow_server import shared_mlflow_server

    return shared_mlflow_server()


@pytest.fixture(scope="session")
def exited_process() -> Any:
    """The :class:`~ft_assets.execution.processes.ProcessIdentity` of a real process that has since exited."""
    import subprocess
    import sys

    from ft_assets.execution.processes import ProcessIdentity

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    identity = ProcessIdentity.of(child.pid)
    child.wait()
    return identity
