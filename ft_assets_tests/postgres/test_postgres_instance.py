"""The team deployment on a real PostgreSQL server: Dagster runs/events/schedules in Postgres through
deploy/dagster.yaml, MLflow tracking through deploy/mlflow-server.sh with a Postgres backend store, and
the chain run read back from both databases with SQL and through DagsterInstance."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ft_assets.execution.launcher import ComputeLauncher
from ft_assets_tests.postgres.conftest import Postgres
from ft_assets_tests.test_scaling import run_chain

pytestmark = pytest.mark.postgres

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PHASE_ASSETS = {
    "base_model",
    "fine_tuned_model",
    "inference_results",
    "base_inference_results",
    "evaluation_report",
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mlflow_server(postgres: Postgres, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """deploy/mlflow-server.sh on a free port, its backend store the ``mlflow`` database."""
    postgres.create_database("mlflow")
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": postgres.host,
        "PGPORT": str(postgres.port),
        "PGUSER": postgres.user,
        "PGPASSWORD": postgres.password,
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "mlartifacts"),
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }
    log = (tmp_path / "mlflow-server.log").open("wb")
    server = subprocess.Popen(["bash", str(DEPLOY / "mlflow-server.sh")], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.read().strip() == b"OK":
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(
                f"MLflow server did not start:\n{(tmp_path / 'mlflow-server.log').read_text()}"
            )
        time.sleep(1)
    try:
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_chain_on_a_postgres_backed_instance(
    postgres: Postgres, mlflow_server: tuple[str, subprocess.Popen[bytes]], write_config: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, server = mlflow_server
    # the database password reached the MLflow server through its environment, not its command line
    assert postgres.password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()

    postgres.create_database("dagster")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": postgres.host,
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": postgres.user,
        "DAGSTER_PG_PASSWORD": postgres.password,
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)
    config = write_config({"fine_tuner": {"max_steps": 1}, "mlflow": {"tracking_uri": url}})

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        result = run_chain(config, instance, ComputeLauncher())
    assert result.success
    run_id = result.run_id

    assert postgres.query("dagster", "SELECT status, pipeline_name FROM runs WHERE run_id = %s", run_id) == [
        ("SUCCESS", "fine_tune_pipeline")
    ]
    materialized = postgres.query(
        "dagster",
        "SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        run_id,
    )
    assert {dg.AssetKey.from_db_string(key).to_user_string() for (key,) in materialized} >= PHASE_ASSETS

    # a fresh instance (as the webserver or another worker would open it) sees the same run
    with dg.DagsterInstance.from_config(str(home)) as reader:
        run = reader.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        event = reader.get_latest_materialization_event(dg.AssetKey("evaluation_report"))
        assert event is not None and event.run_id == run_id
        assert event.asset_materialization is not None
        mlflow_run_id = event.asset_materialization.metadata["mlflow_run_id"].value

    # the MLflow tree landed in the MLflow server's Postgres backend store
    assert postgres.query("mlflow", "SELECT status FROM runs WHERE run_uuid = %s", mlflow_run_id) == [
        ("FINISHED",)
    ]
    tagged = postgres.query(
        "mlflow", "SELECT count(*) FROM tags WHERE key = 'dagster_run_id' AND value = %s", run_id
    )
    assert tagged == [(5,)]  # the parent and one child per phase
