"""The whole asset chain on the tiny embedded model: in-process, and through `dagster job execute`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ft_assets import definitions as code_location
from ft_assets.assets.common import PREFLIGHT_TAG
from ft_assets.execution.processes import ProcessIdentity
from ft_assets.execution.recovery import ORCHESTRATOR_TAG
from ft_assets.jobs import PIPELINE_ASSETS
from ft_assets_tests.helpers import pipeline_resources

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PHASE_ASSETS = ("fine_tuned_model", "inference_results", "base_inference_results", "evaluation_report")


def materialize_chain(
    config_path: Path, instance: dg.DagsterInstance, **run_config: Any
) -> dg.ExecuteInProcessResult:
    job = code_location.defs.resolve_job_def("fine_tune_pipeline")
    return job.execute_in_process(
        instance=instance,
        resources=pipeline_resources(config_path),
        run_config=run_config or None,
    )


def mlflow_runs(tracking_uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} was not created"
    return client.search_runs([exp.experiment_id])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_run_tree(tracking_uri: str, experiment: str, dagster_run_id: str) -> None:
    runs = [
        r
        for r in mlflow_runs(tracking_uri, experiment)
        if r.data.tags.get("dagster_run_id") == dagster_run_id
    ]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = {
        r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    name = parent.info.run_name
    assert set(children) == {
        f"{name}_finetuning",
        f"{name}_inference",
        f"{name}_baseline_inference",
        f"{name}_evaluation",
    }
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert "final_train_loss" in children[f"{name}_finetuning"].data.metrics
    assert children[f"{name}_inference"].data.metrics["rows"] == 60
    assert "eval_rouge_score" in children[f"{name}_evaluation"].data.metrics
    assert "eval_rouge_score" in parent.data.metrics
    assert parent.data.params["finetuner_base_model_id"] == "embedded:tiny-llama"


def test_chain_in_process(write_config: Any, tmp_path: Path) -> None:
    config = write_config()
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_chain(config, instance)
    assert result.success

    report = result.output_for_node("evaluation_report")
    tuned = result.output_for_node("inference_results")
    base = result.output_for_node("base_inference_results")
    artifacts = tmp_path / "artifacts"
    for value in (tuned, base):
        path = Path(value.path)
        assert path.is_file() and artifacts in path.parents and result.run_id in path.parts
        rows = read_jsonl(path)
        assert len(rows) == 60  # one per test example
        assert {"system_prompt", "user_prompt", "assistant_response", "ground_truth"} <= set(rows[0])
    assert any(row["completion_tokens"] > 0 for row in read_jsonl(Path(tuned.path)))

    summary = json.loads(Path(report.json_path).read_text())
    assert Path(report.xlsx_path).is_file()
    assert set(report.summary) == {"exact_match", "rouge_score", "bleu_score"}
    assert summary["primary_metric"] == "rouge_score"
    adapter = Path(result.output_for_node("fine_tuned_model").path)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "ft_assets_model.json").is_file()

    assert_run_tree(f"sqlite:///{tmp_path / 'mlflow.db'}", "fine-tune-pipeline-ci", result.run_id)
    for asset in PHASE_ASSETS:
        materialization = result.asset_materializations_for_node(asset)[0]
        assert materialization.metadata["mlflow_run_id"].value
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["inference_complete"] is True
    # the first step preflighted every phase of the run; the later ones found them checked
    assert instance.get_run_by_id(result.run_id).tags[PREFLIGHT_TAG] == "finetuning,inference,evaluation"


def test_a_bad_evaluation_config_fails_the_chain_in_its_first_step(
    write_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judged = {"metrics": ["answer_accuracy"], "primary_metric": "answer_accuracy"}
    result = code_location.defs.resolve_job_def("fine_tune_pipeline").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources=pipeline_resources(write_config({"evaluator": judged})),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failure.step_key == "base_model"
    error = failure.step_failure_data.error
    while error.cause is not None:
        error = error.cause
    assert error.cls_name == "MetricsError" and "evaluator.metrics ['answer_accuracy']" in error.message
    started = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START}
    assert "fine_tuned_model" not in started, "training started despite a bad evaluation config"


def test_rerun_writes_a_new_run_folder_and_keeps_the_old(write_config: Any) -> None:
    config = write_config({"fine_tuner": {"max_steps": 1}, "inferencer": {"run_baseline": False}})
    instance = dg.DagsterInstance.ephemeral()
    first = materialize_chain(config, instance)
    second = materialize_chain(config, instance)
    paths = [Path(r.output_for_node("inference_results").path) for r in (first, second)]
    assert paths[0] != paths[1]
    assert [len(read_jsonl(p)) for p in paths] == [60, 60]  # a rerun never appends
    assert second.output_for_node("evaluation_report").base_summary == {}


#: The same assets as a job on the multiprocess executor (a process per step), for the CLI test below:
#: steps in separate processes must still share one MLflow parent run.
multiprocess_defs = dg.Definitions.merge(
    code_location.defs,
    dg.Definitions(
        jobs=[
            dg.define_asset_job(
                "fine_tune_pipeline_multiprocess",
                selection=PIPELINE_ASSETS,
                executor_def=dg.multiprocess_executor,
            )
        ]
    ),
)


@pytest.mark.parametrize(
    ("module", "job", "through_server"),
    [
        ("ft_assets.definitions", "fine_tune_pipeline", False),
        ("ft_assets_tests.test_chain", "fine_tune_pipeline_multiprocess", True),
    ],
    ids=["in-process-executor-sqlite", "multiprocess-executor-mlflow-server"],
)
def test_dagster_job_execute_cli(
    write_config: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    module: str,
    job: str,
    through_server: bool,
) -> None:
    tracking_uri = request.getfixturevalue("mlflow_server").url if through_server else None
    config = write_config({"mlflow": {"tracking_uri": tracking_uri}} if tracking_uri else None)
    tracking_uri = tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    run_config = tmp_path / "run.yaml"
    run_config.write_text(f"resources:\n  settings:\n    config:\n      config_path: {config}\n")
    experiment = f"cli-{tmp_path.name}"
    env = {**os.environ, "DAGSTER_HOME": str(home), "MLFLOW_EXPERIMENT_NAME": experiment}
    dagster = str(Path(sys.executable).parent / "dagster")
    process = subprocess.Popen(
        [dagster, "job", "execute", "-m", module, "-j", job, "-c", str(run_config)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    instance = dg.DagsterInstance.from_config(str(home))
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert_run_tree(tracking_uri, experiment, runs[0].run_id)
    # the GPU steps named the CLI process as the run's orchestrator, whichever process ran them
    orchestrator = ProcessIdentity.decode(runs[0].tags[ORCHESTRATOR_TAG])
    assert orchestrator is not None and orchestrator.pid == process.pid


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"fine_tuner": {"rnak": 8}}, "unknown key 'rnak'"),
        ({"inferencer": {"batch_size": "many"}}, "[inferencer] batch_size"),
        ({"fine_tuner": {"training_data_id": "/nonexistent/train.jsonl"}}, "/nonexistent/train.jsonl"),
    ],
)
def test_config_errors_fail_the_run_with_the_precise_message(
    write_config: Any, override: dict, message: str
) -> None:
    config = write_config(override)
    result = code_location.defs.resolve_job_def("finetuning_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources=pipeline_resources(config),
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert message in failures[0].step_failure_data.error.to_string()
