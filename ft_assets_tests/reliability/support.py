"""Helpers of the reliability tests: configs with every output under one folder, test splits, Dagster homes,
copies of a migrated MLflow store, and the fake secrets the audits look for."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_assets.config import deep_merge, relocated_config
from ft_assets_tests.openai_stub import StubStats

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_TEST_SET = PROJECT_ROOT / "data" / "demo" / "test.jsonl"

#: Fake secrets, in the environment of the CLI runs and on their command line; none may be stored anywhere.
ENV_SECRETS = {
    "HF_TOKEN": "hf_FAKEenvTOKENd41c0a2b9e4f7a",
    "OPENAI_API_KEY": "sk-FAKEenv-3b8e7a1c5d9f0e2a6b",
    "MLFLOW_TRACKING_PASSWORD": "FAKEmlflowPW-8c2e4a6b1d3f",
}
CLI_SECRETS = {"--hf-key": "hf_FAKEcliTOKEN5e9a3c7b1d2f8c", "--openai-key": "sk-FAKEcli-9d4c2b7e1a6f3c8e5d"}


def ci_config(path: Path, root: Path, model_cache: Path, overrides: dict[str, Any] | None = None) -> Path:
    """config/ci.toml with data paths made absolute and every output under ``root``, plus ``overrides``."""
    quiet = {"mlflow": {"log_system_metrics": False}}
    return relocated_config(
        PROJECT_ROOT / "config" / "ci.toml",
        path,
        outputs_root=root,
        model_cache_dir=model_cache,
        overrides=deep_merge(quiet, overrides or {}),
    )


def demo_rows(path: Path, start: int, count: int) -> Path:
    """``count`` rows of the demo test set from row ``start``: a smaller test split, real rows."""
    lines = DEMO_TEST_SET.read_text(encoding="utf-8").splitlines()[start : start + count]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dagster_home(root: Path) -> Path:
    """An instance folder with the project's dagster.yaml (sqlite storage, the ``gpu`` pool of one slot), with
    the phases' Python logs (inference progress) in the event log, created once before any run uses it."""
    import dagster as dg

    home = root / "dagster_home"
    home.mkdir(parents=True)
    config = (PROJECT_ROOT / "dagster.yaml").read_text(encoding="utf-8")
    config += "\npython_logs:\n  managed_python_loggers: [ft_assets]\n  python_log_level: INFO\n"
    (home / "dagster.yaml").write_text(config, encoding="utf-8")
    dg.DagsterInstance.from_config(str(home)).dispose()
    return home


def fresh_store(template: Path, root: Path) -> str:
    """A copy of the migrated store at ``root/mlflow.db`` (where :func:`ci_config` points); its URI."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, root / "mlflow.db")
    return f"sqlite:///{root / 'mlflow.db'}"


@dataclass
class CliRun:
    """One ``ft-pipeline`` process: its config, test split, exit status, output and parsed result."""

    name: str
    config: Path
    test_set: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.stdout[self.stdout.index("{") :])


@dataclass
class ConcurrentChains:
    """Two whole-chain runs started together, sharing artifacts root, MLflow store and Dagster instance."""

    root: Path
    home: Path
    tracking_uri: str
    runs: list[CliRun]
    judge: StubStats
