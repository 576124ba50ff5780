"""Faults injected into real runs of the assets, and what survives them.

Real processes throughout: ``dagster job execute`` killed with SIGKILL, a real ``mlflow server`` stopped
between two phases, the local OpenAI-compatible stub timing out or answering garbage, two ``ft-pipeline``
processes at once. The Dagster homes use the project's dagster.yaml (sqlite storage, the ``gpu`` pool of one
slot), as ``make ui`` and the CLI do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
from mlflow import MlflowClient

from ft_assets.asset_values import InferenceResults
from ft_assets.assets.data import testing_dataset
from ft_assets.assets.evaluation import evaluation_report
from ft_assets.config import load_settings
from ft_assets.definitions import defs
from ft_assets.execution.recovery import ORCHESTRATOR_TAG, ProcessIdentity
from ft_assets.phases.checkpoints import last_checkpoint
from ft_assets.phases.models import ResolvedModel
from ft_assets.preflight import preflight
from ft_assets_tests.helpers import pipeline_resources
from ft_assets_tests.mlflow_server import MlflowServer, start_mlflow_server
from ft_assets_tests.openai_stub import openai_stub  # noqa: F401  (pytest fixture)
from ft_assets_tests.reliability.support import (
    PROJECT_ROOT,
    ConcurrentChains,
    ci_config,
    dagster_home,
    demo_rows,
    fresh_store,
    row_ids,
)

KILL_DEADLINE_S = 300
GPU_POOL = "gpu"
TRAIN_STEPS = 30


# ------------------------------------------------------------------------------------------------ helpers


def start_job(
    home: Path, config: Path, job: str, log: Path, launcher: dict[str, Any] | None = None
) -> subprocess.Popen[bytes]:
    """``dagster job execute`` of ``job`` against the instance in ``home``, in its own process group, with
    ``launcher`` as the launcher resource's config."""
    run_config = log.with_suffix(".yaml")
    resources = {"settings": {"config": {"config_path": str(config)}}}
    if launcher:
        resources["launcher"] = {"config": launcher}
    run_config.write_text(json.dumps({"resources": resources}))  # JSON is YAML
    command = [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "ft_assets.definitions",
               "-j", job, "-c", str(run_config)]  # fmt: skip
    # unbuffered: the test watches the output for the moment to strike
    env = {**os.environ, "DAGSTER_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return start_logged(command, env, log)


def start_logged(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` from the project root in its own process group (so :func:`kill_when` can kill all
    of it), its stdout and stderr into ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path) -> None:
    """SIGKILL the process group as soon as ``ready()``; fail if the process ends or stalls first."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    try:
        while not ready():
            assert process.poll() is None, (
                f"ended before the fault: {log.read_text(errors='replace')[-3000:]}"
            )
            assert time.monotonic() < deadline, f"never got ready: {log.read_text(errors='replace')[-3000:]}"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def visible(folder: Path) -> list[str]:
    """What a reader of ``folder`` would take for an output: anything but temp (dot) names and checkpoints."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != "checkpoints")


def slot_holders(instance: dg.DagsterInstance) -> set[str]:
    return instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    event = result.asset_materializations_for_node(asset)[0]
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- killed training


@dataclass
class KilledTraining:
    """A finetuning run killed at its first checkpoint, then rerun in the same instance (nothing done by
    hand: the rerun's start fails the killed run and frees its ``gpu`` slot)."""

    root: Path
    home: Path
    config: Path
    killed_run: dg.DagsterRun
    killed_at_step: int
    killed_pid: int
    published_while_training: list[str]
    published_after_kill: list[str]
    slot_holders_after_kill: set[str]
    rerun: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def killed_training(
    tmp_path_factory: pytest.TempPathFactory,
    model_cache: Path,
    tiny_model: ResolvedModel,
    mlflow_store_template: Path,
) -> KilledTraining:
    root = tmp_path_factory.mktemp("killed_training")
    home = dagster_home(root)
    fresh_store(mlflow_store_template, root)
    config = ci_config(
        root / "pipeline.toml",
        root,
        model_cache,
        {
            "fine_tuner": {"max_steps": TRAIN_STEPS, "save_steps": 2, "save_total_limit": 2},
            "inferencer": {
                "testing_data_id": str(demo_rows(root / "test.jsonl", 0, 20)),
                "run_baseline": False,
                "batch_size": 1,
                "max_new_tokens": 48,
            },
            "mlflow": {"log_model": False},
        },
    )
    outputs = root / "artifacts" / "fine_tuned_model"
    published: set[str] = set()

    def first_checkpoint() -> bool:
        published.update(visible(outputs))
        return any(last_checkpoint(folder) for folder in (outputs / "checkpoints").glob("*"))

    log = root / "killed_training.log"
    job = start_job(home, config, "finetuning_job", log)
    kill_when(job, first_checkpoint, log)
    (checkpoint,) = filter(None, (last_checkpoint(folder) for folder in (outputs / "checkpoints").glob("*")))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (killed,) = instance.get_runs()
        holders = slot_holders(instance)
        published_after_kill = visible(outputs)
        rerun = defs.resolve_job_def("finetuning_job").execute_in_process(
            instance=instance, resources=pipeline_resources(config), raise_on_error=False
        )
        killed = instance.get_run_by_id(killed.run_id)
    return KilledTraining(
        root,
        home,
        config,
        killed,
        int(checkpoint.name.removeprefix("checkpoint-")),
        job.pid,
        sorted(published),
        published_after_kill,
        holders,
        rerun,
    )


def test_a_killed_training_run_publishes_nothing_and_its_rerun_resumes(
    killed_training: KilledTraining,
) -> None:
    killed, rerun = killed_training.killed_run, killed_training.rerun
    assert killed_training.published_while_training == [], "an adapter was visible before training ended"
    assert killed_training.published_after_kill == [], "the killed run left an adapter behind"
    # the dead run kept the gpu slot until the rerun started: its training step would have waited forever
    assert killed_training.slot_holders_after_kill == {killed.run_id}
    assert killed.status == dg.DagsterRunStatus.FAILURE
    assert ProcessIdentity.decode(killed.tags[ORCHESTRATOR_TAG]).pid == killed_training.killed_pid
    assert 0 < killed_training.killed_at_step < TRAIN_STEPS

    assert rerun.success
    values = metadata(rerun, "fine_tuned_model")
    assert killed_training.killed_at_step <= values["resumed_from_step"] < TRAIN_STEPS
    assert values["steps"] == TRAIN_STEPS
    adapter = Path(rerun.output_for_node("fine_tuned_model").path)
    assert adapter.parent.name == "fine_tuned_model" and adapter.name == rerun.run_id
    assert visible(adapter.parent) == [rerun.run_id]
    info = json.loads((adapter / "ft_assets_model.json").read_text())
    assert (
        info["resumed_from_step"] == values["resumed_from_step"] and info["metrics"]["steps"] == TRAIN_STEPS
    )
    # complete: every LoRA matrix is readable and fits the base model (safetensors headers vs shapes)
    report = preflight(load_settings(killed_training.config), phases=(), adapter=adapter)
    assert any("fits the base model" in item for item in report.passed)
    assert not any((adapter.parent / "checkpoints").iterdir()), "checkpoints outlived the published adapter"


def test_a_killed_inference_run_publishes_no_jsonl_and_its_rerun_is_complete(
    killed_training: KilledTraining,
) -> None:
    root, config = killed_training.root, killed_training.config
    outputs = root / "artifacts" / "inference_results"
    log = root / "killed_inference.log"
    batches = 20  # one row per batch (the fixture's config)
    started = start_job(killed_training.home, config, "inference_job", log)
    kill_when(started, lambda: f"inference: 1/{batches} rows" in _text(log), log)
    assert f"inference: {batches}/{batches} rows" not in _text(log), "inference finished before the kill"
    assert not list(outputs.glob("*/inference_results.jsonl")), "a killed run published a JSONL"

    with dg.DagsterInstance.from_config(str(killed_training.home)) as instance:
        killed = next(run for run in instance.get_runs() if run.job_name == "inference_job")
        assert slot_holders(instance) == {killed.run_id}
        rerun = defs.resolve_job_def("inference_job").execute_in_process(
            instance=instance, resources=pipeline_resources(config), raise_on_error=False
        )
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
    assert rerun.success
    path = Path(rerun.output_for_node("inference_results").path)
    assert path == outputs / rerun.run_id / "inference_results.jsonl"
    rows = read_jsonl(path)
    assert [row["id"] for row in rows] == row_ids(root / "test.jsonl")
    assert all(
        {"user_prompt", "assistant_response", "ground_truth", "finish_reason"} <= set(row) for row in rows
    )
    assert not (outputs / killed.run_id / "inference_results.jsonl").exists()


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_phase_subprocess_stops_when_its_orchestrator_alone_is_killed(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, mlflow_store_template: Path
) -> None:
    home = dagster_home(tmp_path)
    fresh_store(mlflow_store_template, tmp_path)
    long_training = {"fine_tuner": {"max_steps": 5000, "save_steps": 5000}, "mlflow": {"log_model": False}}
    config = ci_config(tmp_path / "pipeline.toml", tmp_path, model_cache, long_training)
    log = tmp_path / "job.log"
    job = start_job(home, config, "finetuning_job", log, launcher={"mode": "subprocess"})
    try:
        phases: list[psutil.Process] = []

        def training() -> bool:
            phases[:] = [
                child
                for child in psutil.Process(job.pid).children(recursive=True)
                if "ft_assets.execution.phase" in " ".join(child.cmdline())
            ]
            # past its imports and into loading the model or training
            return bool(phases) and sum(phases[0].cpu_times()[:2]) > 8

        deadline = time.monotonic() + KILL_DEADLINE_S
        while not training():
            assert job.poll() is None and time.monotonic() < deadline, _text(log)[-3000:]
            time.sleep(0.2)
        os.kill(job.pid, signal.SIGKILL)  # the orchestrator alone, as the OOM killer would
        _, alive = psutil.wait_procs(phases, timeout=60)
        assert not alive, f"the phase process trained on after its orchestrator was killed: {alive}"
        # the phase's stderr is the step's, which Dagster captures into the run's compute logs
        said = f"the process that launched this phase (pid {job.pid}) is gone: stopping"
        assert any(said in _text(path) for path in (home / "storage").rglob("*.err"))
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)


# ------------------------------------------------------------------------------------ judge failures


def test_judge_timeouts_and_garbage_leave_a_complete_report_with_nan_rows(
    tmp_path: Path,
    model_cache: Path,
    mlflow_store_template: Path,
    openai_stub: Callable[..., Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = {"MARK-HANG": "hang", "MARK-GARBAGE": "garbage", "MARK-500": "http500"}
    answers = ["Paris.", "MARK-HANG Lyon.", "Berlin.", "MARK-GARBAGE Rome.", "Oslo.", "MARK-500 Bergen."]
    rows = [
        {
            "id": f"row-{index}",
            "system_prompt": None,
            "user_prompt": f"Which city is meant in question {index}?",
            "assistant_response": answer,
            "ground_truth": answer.split()[-1],
        }
        for index, answer in enumerate(answers)
    ]
    jsonl = tmp_path / "inference_results.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    stub = openai_stub(failures=failures)
    uri = fresh_store(mlflow_store_template, tmp_path)
    config = ci_config(
        tmp_path / "pipeline.toml",
        tmp_path,
        model_cache,
        {
            "evaluator": {
                "metrics": ["exact_match", "answer_accuracy"],
                "primary_metric": "exact_match",
                "judge": {"base_url": stub.base_url, "timeout_s": 1.0, "max_retries": 0},
            }
        },
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge-key")

    @dg.asset(name="inference_results")
    def given_inference_results() -> InferenceResults:
        return InferenceResults(
            path=str(jsonl),
            rows=len(rows),
            expected_rows=len(rows),
            empty_responses=0,
            model_hash="sha256:tuned",
            dataset_hash="sha256:test",
            metrics={},
        )

    @dg.asset(name="base_inference_results")
    def no_baseline() -> InferenceResults | None:
        return None  # as with [inferencer] run_baseline = false

    started = time.monotonic()
    result = dg.materialize(
        [given_inference_results, no_baseline, evaluation_report, testing_dataset],
        resources=pipeline_resources(config),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert time.monotonic() - started < 120, "a hanging judge must cost one timeout per row, not the run"
    report = result.output_for_node("evaluation_report")
    summary = json.loads(Path(report.json_path).read_text())
    assert summary["row_count"] == len(rows)
    judged = summary["metrics"]["fine_tuned"]["answer_accuracy"]
    assert (judged["count"], judged["nan_count"]) == (3, 3)
    assert judged["mean"] == 1.0  # the stub's literal judge: every surviving answer equals its reference
    assert summary["metrics"]["fine_tuned"]["exact_match"]["nan_count"] == 0

    from openpyxl import load_workbook

    sheet = load_workbook(report.xlsx_path)["Per-sample"]
    header, *body = list(sheet.iter_rows(values_only=True))
    assert [line[0] for line in body] == [row["id"] for row in rows]
    scores = [line[header.index("answer_accuracy")] for line in body]
    errors = [line[header.index("errors")] for line in body]
    failing = [index for index, answer in enumerate(answers) if answer.startswith("MARK")]
    assert [index for index, score in enumerate(scores) if score is None] == failing
    assert all(errors[index] and "answer_accuracy" in errors[index] for index in failing)
    assert "timed out" in errors[1].lower() and "500" in errors[5]
    assert all(errors[index] is None for index in range(len(rows)) if index not in failing)

    child = MlflowClient(uri).get_run(metadata(result, "evaluation_report")["mlflow_run_id"])
    assert child.info.status == "FINISHED"
    assert child.data.metrics["eval_answer_accuracy"] == 1.0


# ------------------------------------------------------------------------------- MLflow server stopped


@pytest.fixture(scope="module")
def two_mlflow_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[MlflowServer]]:
    """Two real servers started side by side (each test below stops one)."""
    roots = [tmp_path_factory.mktemp(f"mlflow_server_{index}") for index in range(2)]
    servers: list[MlflowServer | BaseException] = [RuntimeError("not started")] * 2

    def start(index: int) -> None:
        try:
            servers[index] = start_mlflow_server(roots[index])
        except BaseException as error:  # re-raised in the test's thread below
            servers[index] = error

    threads = [threading.Thread(target=start, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        for item in servers:
            if isinstance(item, BaseException):
                raise item
        yield [item for item in servers if isinstance(item, MlflowServer)]
    finally:
        for item in servers:
            if isinstance(item, MlflowServer):
                item.stop()


PHASE_ASSETS = ("base_inference_results", "inference_results", "evaluation_report")


@pytest.mark.parametrize("required", [True, False], ids=["required", "optional"])
def test_mlflow_server_stopped_after_the_first_phase(
    required: bool,
    killed_training: KilledTraining,
    two_mlflow_servers: list[MlflowServer],
    tmp_path: Path,
    model_cache: Path,
) -> None:
    server = two_mlflow_servers[int(required)]
    config = ci_config(
        tmp_path / "pipeline.toml",
        tmp_path,
        model_cache,
        {
            "inferencer": {
                "testing_data_id": str(demo_rows(tmp_path / "test.jsonl", 0, 6)),
                "max_new_tokens": 8,
            },
            "mlflow": {"tracking_uri": server.url, "required": required},
        },
    )
    stopped_after: list[str] = []

    @dg.success_hook(name="stop_mlflow_after_the_first_phase")
    def stop_server(context: dg.HookContext) -> None:
        if context.op.name in PHASE_ASSETS and not stopped_after:
            server.stop()
            stopped_after.append(context.op.name)

    hooked = dg.define_asset_job("stop_mlflow_mid_run", selection=list(PHASE_ASSETS), hooks={stop_server})
    location = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=[hooked],
        resources=pipeline_resources(config),
    )
    with dg.DagsterInstance.from_config(str(killed_training.home)) as instance:
        result = location.resolve_job_def(hooked.name).execute_in_process(
            instance=instance, raise_on_error=False
        )
        run = instance.get_run_by_id(result.run_id)
    assert server.process.poll() is not None and len(stopped_after) == 1
    first = stopped_after[0]
    assert metadata(result, first)["mlflow_run_id"], "the first phase was tracked while the server was up"
    later = [name for name in PHASE_ASSETS if name != first]
    if required:
        assert not result.success and run.status == dg.DagsterRunStatus.FAILURE
        failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        assert failures, "the run failed without a failed step"
        message = failures[0].step_failure_data.error.to_string()
        assert failures[0].step_key in later
        assert (
            "TrackingUnavailableError" in message and server.url in message and "is not reachable" in message
        )
        assert not result.asset_materializations_for_node("evaluation_report")
    else:
        assert result.success and run.status == dg.DagsterRunStatus.SUCCESS
        for name in later:
            assert "mlflow_run_id" not in metadata(result, name), f"{name} claims an MLflow run"
        warnings = [
            record.user_message
            for record in instance.all_logs(result.run_id)
            if "MLflow tracking is off for phase" in record.user_message
        ]
        assert len(warnings) == len(later) and all(server.url in text for text in warnings)
        assert result.output_for_node("evaluation_report").rows == 6


# ------------------------------------------------------------------------------------ concurrent runs


def test_two_chains_at_once_keep_their_outputs_and_mlflow_runs_apart(
    concurrent_chains: ConcurrentChains,
) -> None:
    runs = {run.name: run for run in concurrent_chains.runs}
    for run in runs.values():
        assert run.returncode == 0, run.stderr[-3000:]
    results = {name: run.result for name, run in runs.items()}
    run_ids = {name: result["dagster_run_id"] for name, result in results.items()}
    parents = {name: result["mlflow_parent_run_id"] for name, result in results.items()}
    assert len(set(run_ids.values())) == 2 and len(set(parents.values())) == 2

    with dg.DagsterInstance.from_config(str(concurrent_chains.home)) as instance:
        statuses = {run.run_id: run.status for run in instance.get_runs()}
    assert statuses == {run_id: dg.DagsterRunStatus.SUCCESS for run_id in run_ids.values()}

    artifacts = concurrent_chains.root / "artifacts"
    expected = {"alpha": (4, 2.0), "beta": (8, 3.0)}
    for name, run in runs.items():
        run_id = run_ids[name]
        jsonl = artifacts / "inference_results" / run_id / "inference_results.jsonl"
        assert [row["id"] for row in read_jsonl(jsonl)] == row_ids(run.test_set)
        info = json.loads((artifacts / "fine_tuned_model" / run_id / "ft_assets_model.json").read_text())
        assert (info["config"]["rank"], info["metrics"]["steps"]) == expected[name]
        summary = json.loads(
            (artifacts / "evaluation_report" / run_id / "evaluation_summary.json").read_text()
        )
        assert summary["provenance"]["dagster_run_id"] == run_id and summary["row_count"] == len(
            row_ids(run.test_set)
        )
    assert visible(artifacts / "base_inference_results") == [run_ids["alpha"]]  # beta runs no baseline

    client = MlflowClient(concurrent_chains.tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "fine-tune-pipeline-ci"]
    all_runs = client.search_runs([experiment.experiment_id])
    for name, phases in (
        ("alpha", {"finetuning", "inference", "baseline_inference", "evaluation"}),
        ("beta", {"finetuning", "inference", "evaluation"}),
    ):
        parent = client.get_run(parents[name])
        assert parent.info.run_name.startswith(f"{name}-") and parent.info.status == "FINISHED"
        assert parent.data.params["finetuner_rank"] == str(expected[name][0])
        children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert {r.data.tags["ft_assets.phase"] for r in children} == phases
        assert {r.data.tags["dagster_run_id"] for r in children} == {run_ids[name]}
        assert all(r.info.status == "FINISHED" for r in children)
    assert len(all_runs) == 2 + 4 + 3, [r.info.run_name for r in all_runs]


# -------------------------------------------------------------------------------------------- low memory


def test_peak_memory_grows_with_max_length_times_batch_size(
    model_cache: Path, tiny_model: ResolvedModel
) -> None:
    """bench/memory_curve.py's measurement, two points in fresh processes: 8x the tokens per batch must cost
    clearly more memory (measured: ~+260 MiB on the tiny model; the margin asks for 100)."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.memory_curve import measure

    points = [(128, 2), (1024, 16)]
    with ThreadPoolExecutor(len(points)) as pool:
        small, large = pool.map(lambda point: measure(*point, steps=2, cache_dir=model_cache), points)
    assert small["steps"] == large["steps"] == 2
    assert large["peak_rss_mib"] > small["peak_rss_mib"]
    assert large["training_increment_mib"] > small["training_increment_mib"] + 100, (small, large)
