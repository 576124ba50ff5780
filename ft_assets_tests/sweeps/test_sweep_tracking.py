"""The sweep's MLflow tree against a real ``mlflow server``: the client is the phases' one, so credentials in
the tracking URI are moved to MLflow's variables and never reach a run's params, tags or artifacts."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ft_assets.config import build_settings
from ft_assets.secrets import SecretFoundError
from ft_assets.sweeps.candidates import plan_sweep
from ft_assets.sweeps.tracking import candidate_run, log_candidate_metrics, record_leaderboard
from ft_assets.tracking_options import TrackingOptions
from ft_assets_tests.mlflow_server import MlflowServer

PASSWORD = "Sw33pPW-4c1d8e"


def test_sweep_runs_never_hold_the_uri_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_server: MlflowServer
) -> None:
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(var, "placeholder")  # so that monkeypatch restores the variable's absence
        monkeypatch.delenv(var)
    host = mlflow_server.url.split("://", 1)[1]
    options = TrackingOptions(
        f"http://sweeper:{PASSWORD}@{host}", f"sweep-{uuid.uuid4().hex}", log_system_metrics=False
    )
    plan = plan_sweep(build_settings({"sweep": {"grid": {"rank": [4, 8]}}}, base_dir=tmp_path))
    log = logging.getLogger("test")

    run_ids = [candidate_run(options, plan, candidate, log) for candidate in plan.candidates]
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == (
        "sweeper",
        PASSWORD,
    )
    log_candidate_metrics(
        options, str(run_ids[0]), {"steps": 3, "trained_tokens": 90, "train_seconds": 1.5}, log
    )
    winner = plan.candidates[0].name
    board = {
        "candidates": [{"candidate": winner, "mean": 0.75}],
        "winner": winner,
        "rule": "highest mean",
        "primary_metric": "bleu_score",
    }
    board_file = tmp_path / "leaderboard.json"
    board_file.write_text(json.dumps(board), encoding="utf-8")
    sweep_run_id = record_leaderboard(options, plan, board, (board_file,), log)

    client = MlflowClient(mlflow_server.url)
    sweep_run = client.get_run(str(sweep_run_id))
    assert sweep_run.info.status == "FINISHED"
    assert sweep_run.data.tags["ft_assets.sweep_winner"] == winner
    assert [a.path for a in client.list_artifacts(str(sweep_run_id))] == ["leaderboard.json"]
    first = client.get_run(str(run_ids[0]))
    assert first.data.params["sweep.rank"] == "4" and first.data.metrics["train_steps"] == 3
    assert first.data.tags["mlflow.parentRunId"] == sweep_run_id
    for run in (sweep_run, first, client.get_run(str(run_ids[1]))):
        recorded = json.dumps([run.data.params, run.data.tags, run.info.artifact_uri])
        assert PASSWORD not in recorded and "sweeper:" not in recorded

    leaking = tmp_path / "leaking.json"
    leaking.write_text(json.dumps({"note": f"pw {PASSWORD}"}), encoding="utf-8")
    with pytest.raises(SecretFoundError, match="MLFLOW_TRACKING_PASSWORD"):
        record_leaderboard(options, plan, board, (leaking,), log)
    assert [a.path for a in client.list_artifacts(str(sweep_run_id))] == ["leaderboard.json"]
