"""A real 3-candidate sweep of the tiny model: ``ft-pipeline --sweep`` SIGKILLed after its first candidate,
then launched again (which trains only the other two), then once more (which trains nothing).

Real processes, a persistent Dagster instance and a real MLflow sqlite store throughout; the expectations
are read back from the instance, the store and the files, not from the runner's own summary.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow import MlflowClient

from ft_assets import cli
from ft_assets.config import relocated_config
from ft_assets_tests.reliability.support import dagster_home, demo_rows
from ft_assets_tests.reliability.test_faults import kill_when, start_logged

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = ["ms1", "ms2", "ms3"]
SWEEP_ASSETS = ("sweep_fine_tuned_model", "sweep_inference_results", "sweep_evaluation_report")
EXPERIMENT = "fine-tune-pipeline-ci"


@dataclass
class Sweep:
    """The sweep's config, instance and what each launch reported."""

    config: Path
    home: Path
    tracking_uri: str
    killed_first: list[str]
    #: the sweep run's MLflow status right after the kill (candidates still to come)
    status_after_kill: str
    resumed: dict[str, Any]
    again: dict[str, Any]

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))


def _evaluated(instance: dg.DagsterInstance) -> list[str]:
    records = instance.fetch_materializations(dg.AssetKey("sweep_evaluation_report"), limit=10).records
    return [r.asset_materialization.partition for r in records if r.asset_materialization]


def _kill_after_first_candidate(command: list[str], env: dict[str, str], home: Path, log: Path) -> list[str]:
    """Start ``command`` in its own process group; SIGKILL the group once one candidate is evaluated."""
    process = start_logged(command, env, log)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        kill_when(process, lambda: bool(_evaluated(instance)), log)
        return _evaluated(instance)
    finally:
        instance.dispose()


def _launch(config: Path, home: Path) -> dict[str, Any]:
    """``ft-pipeline --sweep --json`` in this process; its parsed output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["--sweep", "--config", str(config), "--dagster-home", str(home), "--json"])
    assert status == 0, out.getvalue()[-3000:]
    text = out.getvalue()
    return json.loads(text[text.index("{") :])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, model_cache: Path, tiny_model: Any) -> Iterator[Sweep]:
    root = tmp_path_factory.mktemp("sweep")
    overrides = {
        "sweep": {"name": "steps", "grid": {"max_steps": [1, 2, 3]}},
        "inferencer": {"testing_data_id": str(demo_rows(root / "test.jsonl", 0, 12)), "max_new_tokens": 4},
        "mlflow": {"log_system_metrics": False},
        "evaluator": {"register_model": True, "registered_model_name": "sweep-winner"},
    }
    config = relocated_config(
        PROJECT_ROOT / "config" / "ci.toml",
        root / "sweep.toml",
        outputs_root=root,
        model_cache_dir=model_cache,
        overrides=overrides,
    )
    home = dagster_home(root)
    env = {**os.environ, "DAGSTER_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [str(Path(sys.executable).parent / "ft-pipeline"), "--sweep", "--config", str(config)]
    killed_first = _kill_after_first_candidate(command, env, home, root / "killed.log")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    (status_after_kill,) = [
        r.info.status for r in _runs(tracking_uri) if r.data.tags.get("ft_assets.role") == "sweep"
    ]
    resumed = _launch(config, home)
    again = _launch(config, home)
    yield Sweep(config, home, tracking_uri, killed_first, status_after_kill, resumed, again)


def _materialized_partitions(instance: dg.DagsterInstance, asset: str) -> list[str]:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
    return sorted(r.asset_materialization.partition for r in records if r.asset_materialization)


def test_the_relaunch_trains_only_the_candidates_the_killed_sweep_had_not_finished(sweep: Sweep) -> None:
    assert sweep.killed_first == ["ms1"]  # grid order: the first candidate is the first done
    assert sorted(sweep.resumed["ran"]) == ["ms2", "ms3"] and sweep.resumed["already_done"] == ["ms1"]
    assert sweep.again["ran"] == {} and sweep.again["already_done"] == CANDIDATES
    instance = sweep.instance()
    try:
        # each candidate trained exactly once over the three launches (ms2 may have started before the kill,
        # but a killed step publishes nothing)
        assert _materialized_partitions(instance, "sweep_fine_tuned_model") == CANDIDATES
        assert instance.get_dynamic_partitions("sweep_candidates") == CANDIDATES
        # the base model's inference ran once, for all candidates and all launches
        base = instance.fetch_materializations(dg.AssetKey("base_inference_results"), limit=10).records
        assert len(base) == 1
        # the killed run of ms2 is no longer holding the gpu pool's slot
        assert not instance.event_log_storage.get_concurrency_info("gpu").active_run_ids
    finally:
        instance.dispose()


def test_a_sweep_materializes_one_partition_per_candidate_and_one_leaderboard(sweep: Sweep) -> None:
    instance = sweep.instance()
    try:
        for asset in SWEEP_ASSETS:
            assert _materialized_partitions(instance, asset) == CANDIDATES, asset
        boards = instance.fetch_materializations(dg.AssetKey("sweep_leaderboard"), limit=10).records
        # unpartitioned: one materialization per completed launch
        assert [r.asset_materialization.partition for r in boards] == [None, None]
        metadata = boards[0].asset_materialization.metadata
        assert metadata["winner"].value == sweep.again["leaderboard"]["winner"]
        table = metadata["leaderboard"].value
        assert all(f"| {name} |" in table for name in CANDIDATES) and "vs leader (paired)" in table
    finally:
        instance.dispose()


def _runs(uri: str) -> list[Any]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_mlflow_tree_is_sweep_then_candidates_then_phases(sweep: Sweep) -> None:
    runs = _runs(sweep.tracking_uri)
    sweeps = [r for r in runs if r.data.tags.get("ft_assets.role") == "sweep"]
    assert len(sweeps) == 1
    top = sweeps[0]
    assert top.info.status == "FINISHED" and top.info.run_name.startswith("steps-")
    assert top.data.tags["ft_assets.sweep_winner"] == sweep.again["leaderboard"]["winner"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == top.info.run_id]
    candidates = {r.info.run_name: r for r in children if r.data.tags.get("ft_assets.role") == "candidate"}
    assert sorted(candidates) == CANDIDATES  # the killed sweep's runs were found again, not duplicated
    # the sweep run's other child: the shared base inference (see the test below)
    assert [r.data.tags.get("ft_assets.phase") for r in children if r not in candidates.values()] == [
        "baseline_inference"
    ]
    for name, run in candidates.items():
        assert run.data.tags["ft_assets.role"] == "candidate"
        steps = name.removeprefix("ms")
        assert run.data.params["sweep.max_steps"] == steps and run.data.params["finetuner_max_steps"] == steps
        assert "eval_rouge_score" in run.data.metrics and run.data.metrics["train_steps"] == int(steps)
        phases = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        finished = {r.info.run_name for r in phases if r.info.status == "FINISHED"}
        assert {f"{name}_finetuning", f"{name}_inference", f"{name}_evaluation"} <= finished, name
        assert finished <= {
            f"{name}_finetuning",
            f"{name}_inference",
            f"{name}_evaluation",
            f"{name}_promotion",
        }


def test_the_shared_base_inference_is_a_child_of_the_sweep_run_and_no_run_is_outside_the_tree(
    sweep: Sweep,
) -> None:
    runs = _runs(sweep.tracking_uri)
    (top,) = [r for r in runs if r.data.tags.get("ft_assets.role") == "sweep"]
    base = [r for r in runs if r.data.tags.get("ft_assets.phase") == "baseline_inference"]
    assert len(base) == 1  # once for the three launches
    assert base[0].data.tags["mlflow.parentRunId"] == top.info.run_id and base[0].info.status == "FINISHED"
    # the base phase's end did not end the sweep run: it was still RUNNING when the sweep was killed
    assert sweep.status_after_kill == "RUNNING"
    by_id = {r.info.run_id: r for r in runs}
    for run in runs:  # every run's chain of parents ends at the sweep run
        chain = run
        while chain.info.run_id != top.info.run_id:
            parent = chain.data.tags.get("mlflow.parentRunId")
            assert parent in by_id, f"{run.info.run_name} is outside the sweep's tree"
            chain = by_id[parent]


def test_leaderboard_agrees_with_each_candidates_report_and_states_its_winner_rule(sweep: Sweep) -> None:
    board = sweep.again["leaderboard"]
    assert board["primary_metric"] == "rouge_score"
    rows = {row["candidate"]: row for row in board["candidates"]}
    assert sorted(rows) == CANDIDATES
    for name, row in rows.items():
        report = json.loads(Path(row["evaluation"]["json_path"]).read_text())
        summary = report["metrics"]["fine_tuned"]["rouge_score"]
        assert row["mean"] == pytest.approx(summary["mean"])
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((summary["ci_low"], summary["ci_high"]))
        vs_base = report["comparison"]["rouge_score"]
        assert row["vs_base"]["delta_ci_low"] == pytest.approx(vs_base["delta_ci_low"])
        assert row["steps"] == int(name.removeprefix("ms"))
    # training cost grows with the steps; a tie on the metric goes to the cheaper candidate
    tokens = [rows[name]["trained_tokens"] for name in CANDIDATES]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3
    contenders = [row for row in rows.values() if row["eligible"] and row["tied_with_leader"]]
    assert board["winner"] == min(contenders, key=lambda row: row["trained_tokens"])["candidate"]
    assert board["winner_model"]["path"] == rows[board["winner"]]["model"]["path"]
    assert Path(board["winner_model"]["path"], "adapter_config.json").is_file()
    assert "cheapest eligible candidate tied with the leader" in board["rule"]
    assert Path(board["xlsx_path"]).is_file() and Path(board["json_path"]).is_file()


def test_the_winner_is_promoted_through_promoted_models_gates(sweep: Sweep) -> None:
    board, promotion = sweep.again["leaderboard"], sweep.again["promotion"]
    assert promotion["registered"] is True and promotion["name"] == "sweep-winner"
    client = MlflowClient(sweep.tracking_uri)
    version = client.get_model_version_by_alias("sweep-winner", promotion["alias"])
    assert str(version.version) == promotion["version"]
    assert version.run_id == _finetuning_run(sweep, board["winner"])
    # the promotion run is one of the winner's phase runs
    winner = next(r for r in _runs(sweep.tracking_uri) if r.info.run_name == board["winner"])
    promotions = [r for r in _runs(sweep.tracking_uri) if r.info.run_name == f"{board['winner']}_promotion"]
    assert promotions and {r.data.tags["mlflow.parentRunId"] for r in promotions} == {winner.info.run_id}


def _finetuning_run(sweep: Sweep, candidate: str) -> str:
    runs = [r for r in _runs(sweep.tracking_uri) if r.info.run_name == f"{candidate}_finetuning"]
    finished = [r.info.run_id for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1
    return finished[0]
