"""End-to-end fixtures: a real MLflow server, a real ``dagster dev`` (webserver + daemon) and headless
Chromium, all on 127.0.0.1, against a temporary Dagster instance and copies of the demo datasets.

These tests run with ``pytest -m e2e`` (``make e2e``); a plain ``pytest`` run deselects them, because
they need Debian's ``chromium`` and several minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ft_assets_tests.mlflow_server import MlflowServer, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO = PROJECT_ROOT / "data" / "demo"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCATION = "ft_assets"
SENSOR_INTERVAL_S = 3
START_TIMEOUT_S = 240.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep e2e tests out of runs that do not ask for them with ``-m e2e``."""
    if "e2e" in (config.option.markexpr or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("e2e")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("e2e")]


@dataclass
class DagsterDev:
    """A running ``dagster dev``: its URL, instance folder, config and datasets."""

    url: str
    home: Path
    config: Path
    datasets: Path
    log: Path
    process: subprocess.Popen[bytes]

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        """POST a query to the webserver's GraphQL API; errors fail the test with the response."""
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload
        return payload["data"]

    def wait_for(self, what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
        """Poll ``probe`` until it returns something truthy; fail with the server log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            value = probe()
            if value:
                return value
            time.sleep(1)
        tail = self.log.read_text(errors="replace")[-4000:]
        pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; dagster dev log:\n{tail}")

    def stop(self) -> None:
        """Stop the webserver, daemon, code server and any run worker (one process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        # dagster dev does not always take its children down on SIGTERM.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def _loaded(dev: DagsterDev) -> bool:
    try:
        data = dev.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
    except (urllib.error.URLError, OSError):
        return False
    entries = data["workspaceOrError"]["locationEntries"]
    for entry in entries:
        error = entry["locationOrLoadError"] or {}
        assert error.get("__typename") != "PythonError", error.get("message")
    return any(
        e["name"] == LOCATION and e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries
    )


def e2e_config(mlflow_url: str, datasets: Path, root: Path, model_cache: Path) -> str:
    """config/ci.toml's tiny pipeline, with its datasets, outputs and MLflow server under ``root``."""
    import tomli_w

    from ft_assets.config import read_toml

    data = read_toml(PROJECT_ROOT / "config" / "ci.toml")
    data["fine_tuner"].update(
        training_data_id=str(datasets / "train.jsonl"),
        validation_data_id=str(datasets / "validation.jsonl"),
        max_steps=2,
    )
    data["inferencer"]["testing_data_id"] = str(datasets / "test.jsonl")
    data["mlflow"].update(tracking_uri=mlflow_url, experiment_name="ft-assets-e2e", log_system_metrics=False)
    data["pipeline"].update(artifacts_root=str(root / "artifacts"), model_cache_dir=str(model_cache))
    return tomli_w.dumps(data)


@pytest.fixture(scope="module")
def dagster_dev(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer, model_cache: Path
) -> Iterator[DagsterDev]:
    root = tmp_path_factory.mktemp("e2e")
    datasets = root / "datasets"
    datasets.mkdir()
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        shutil.copy(DEMO / name, datasets / name)
    config = root / "pipeline.toml"
    config.write_text(e2e_config(mlflow_server.url, datasets, root, model_cache))
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FT_ASSETS_CONFIG": str(config),
        "FT_ASSETS_DATASET_SENSOR_INTERVAL_S": str(SENSOR_INTERVAL_S),
        "DAGSTER_WEBSERVER_URL": url,
    }
    log = root / "dagster-dev.log"
    command = [
        str(Path(sys.executable).parent / "dagster"),
        *("dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    dev = DagsterDev(url, home, config, datasets, log, process)
    try:
        dev.wait_for("the ft_assets code location to load", lambda: _loaded(dev), START_TIMEOUT_S)
        yield dev
    finally:
        dev.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does this)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
