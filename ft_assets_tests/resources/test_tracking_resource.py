"""MlflowTracking end to end: small phase assets run with ``materialize`` and the multiprocess executor,
checked through MlflowClient against a real MLflow server (and a sqlite store for the secret audit)."""

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.validation import _validate_metric_name

from ft_assets.config import ConfigError, Settings, build_settings
from ft_assets.resources.tracking import (
    DAGSTER_TAG_PARENT_RUN,
    MlflowTracking,
    mlflow_run_failure_sensor,
)
from ft_assets.secrets import SECRET_ENV_VARS
from ft_assets.tracking_options import TrackingUnavailableError
from ft_assets_tests.mlflow_server import MlflowServer, free_port

ASSET_PHASES = {
    "trained": "finetuning",
    "baseline": "baseline_inference",
    "predictions": "inference",
    "evaluated": "evaluation",
}


class Plan(dg.ConfigurableResource):
    """What the test assets do: where the project lives, what fails, which text to push everywhere."""

    base_dir: str
    fail_phase: str = ""
    fail_report: bool = False
    secret: str = ""
    pause_s: float = 0.0


def _settings(plan: Plan) -> Settings:
    return build_settings({"mlflow": {"experiment_name": "from-settings"}}, base_dir=Path(plan.base_dir))


def _run_phase(
    context: dg.AssetExecutionContext, tracking: MlflowTracking, plan: Plan, phase: str
) -> dg.MaterializeResult:
    with tracking.phase_run(context, phase, _settings(plan)) as run:
        run.log_params({f"{phase}_param": f"value {plan.secret}"})
        run.log_metrics(
            {
                "rouge_score(mode=fmeasure)": 0.5,
                f"{phase} score=1": 1.0,
                "a//b": 2.0,
                "note": f"{plan.secret}",
            },
            step=1,
        )
        run.log_parent_metrics({f"eval/{phase}": 0.25})
        run.set_tags({"phase note": f"tag {plan.secret}"})
        run.log_dict({"phase": phase, "secret": plan.secret}, f"{phase}/summary.json")
        run.log_dataset(f"{phase}_data", "d" * 64, plan.base_dir, "training")
        if phase == "finetuning":
            time.sleep(plan.pause_s)
        if plan.fail_phase == phase:
            raise RuntimeError(f"{phase} failed on purpose {plan.secret}")
    return dg.MaterializeResult(metadata=run.dagster_metadata())


@dg.asset
def trained(
    context: dg.AssetExecutionContext, mlflow_tracking: MlflowTracking, plan: Plan
) -> dg.MaterializeResult:
    return _run_phase(context, mlflow_tracking, plan, "finetuning")


@dg.asset
def baseline(
    context: dg.AssetExecutionContext, mlflow_tracking: MlflowTracking, plan: Plan
) -> dg.MaterializeResult:
    return _run_phase(context, mlflow_tracking, plan, "baseline_inference")


@dg.asset(deps=[trained])
def predictions(
    context: dg.AssetExecutionContext, mlflow_tracking: MlflowTracking, plan: Plan
) -> dg.MaterializeResult:
    return _run_phase(context, mlflow_tracking, plan, "inference")


@dg.asset(deps=[predictions, baseline])
def evaluated(
    context: dg.AssetExecutionContext, mlflow_tracking: MlflowTracking, plan: Plan
) -> dg.MaterializeResult:
    return _run_phase(context, mlflow_tracking, plan, "evaluation")


@dg.asset(deps=[evaluated])
def report(plan: Plan) -> None:
    """Not a tracked phase: its failure is what mlflow_run_failure_sensor is for."""
    if plan.fail_report:
        raise RuntimeError("report failed on purpose")


ASSETS = [trained, baseline, predictions, evaluated, report]


def multiprocess_job() -> dg.JobDefinition:
    """The two independent phases as a job on the multiprocess executor: two processes at once."""
    defs = dg.Definitions(
        assets=ASSETS,
        jobs=[
            dg.define_asset_job(
                "tracked", selection=[trained, baseline], executor_def=dg.multiprocess_executor
            )
        ],
        resources={
            "mlflow_tracking": MlflowTracking.configure_at_launch(),
            "plan": Plan.configure_at_launch(),
        },
    )
    return defs.resolve_job_def("tracked")


def _materialize(tracking: MlflowTracking, plan: Plan, **kwargs: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, resources={"mlflow_tracking": tracking, "plan": plan}, **kwargs)


def _tree(uri: str, experiment: str, dagster_run_id: str) -> tuple[Run, dict[str, Run]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.dagster_run_id = '{dagster_run_id}'")
    parents = [r for r in runs if r.data.tags.get("ft_assets.role") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = {
        r.data.tags["ft_assets.phase"]: r for r in runs if r.data.tags.get("ft_assets.role") == "child"
    }
    for child in children.values():
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.run_name == f"{parents[0].info.run_name}_{child.data.tags['ft_assets.phase']}"
    return parents[0], children


def _fake_secrets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    secrets = [f"fake-{var.lower()}-{uuid.uuid4().hex}" for var in SECRET_ENV_VARS]
    for var, value in zip(SECRET_ENV_VARS, secrets, strict=True):
        monkeypatch.setenv(var, value)
    return secrets


def _files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {n[:12]}" for n in needles if n.encode() in data]
    return hits


def _event_log_hits(
    instance: dg.DagsterInstance, run_id: str, needles: list[str], skip: set[str]
) -> list[str]:
    hits = []
    for entry in instance.all_logs(run_id):
        event_type = entry.dagster_event.event_type_value if entry.dagster_event else "log"
        if event_type in skip:
            continue
        text = dg.serialize_value(entry)
        hits += [f"{event_type}: {n[:12]}" for n in needles if n in text]
    return hits


def test_materialize_builds_one_parent_with_a_child_per_phase(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
         "--allow-empty", "-m", "init"],
        check=True,
    )  # fmt: skip
    commit = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    secrets = _fake_secrets(monkeypatch)
    password = secrets[SECRET_ENV_VARS.index("MLFLOW_TRACKING_PASSWORD")]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("FT_TEST_NOTE", f"note with {secrets[0]}")
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "http://dagster.example:3000/")
    experiment = f"tree-{uuid.uuid4().hex}"
    # Credentials in the URI must be used but never shown, tagged or logged.
    uri_with_password = mlflow_server.url.replace("http://", f"http://alice:{password}@")
    tracking = MlflowTracking(
        tracking_uri=uri_with_password,
        experiment_name=experiment,
        run_name_prefix="ci-",
        env_to_tag=["FT_TEST_NOTE"],
        extra_tags={"team": "nlp", "leak": secrets[1]},
        system_metrics_sampling_interval=0.2,
    )
    plan = Plan(base_dir=str(tmp_path), secret=" ".join(secrets), pause_s=0.8)
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(tracking, plan, instance=instance)
    assert result.success
    parent, children = _tree(mlflow_server.url, experiment, result.run_id)

    assert sorted(children) == sorted(ASSET_PHASES.values())
    assert parent.info.run_name.startswith("ci-")
    assert parent.info.status == "FINISHED"
    assert all(child.info.status == "FINISHED" for child in children.values())
    tags = parent.data.tags
    assert tags["dagster_run_url"] == f"http://dagster.example:3000/runs/{result.run_id}"
    assert tags["git_commit"] == commit
    assert tags["ft_assets.version"] and tags["team"] == "nlp"
    assert tags["env.FT_TEST_NOTE"] == "note with ***" and tags["leak"] == "***"
    expected_params = _settings(plan).flat_params()
    assert {k: parent.data.params[k] for k in expected_params} == expected_params
    assert parent.data.params["dataset_finetuning_data_hash"] == "d" * 64
    for phase, child in children.items():
        assert child.data.metrics[f"{phase}_duration_s"] > 0
        assert parent.data.metrics[f"{phase}_duration_s"] == child.data.metrics[f"{phase}_duration_s"]
        assert {"rouge_score_mode:fmeasure_", f"{phase} score:1", "a/b"} <= set(child.data.metrics)
        assert child.data.params[f"{phase}_param"] == "value " + " ".join(["***"] * len(secrets))
        assert [d.dataset.name for d in child.inputs.dataset_inputs] == [f"{phase}_data"]
    assert parent.data.metrics["total_duration_s"] >= parent.data.metrics["finetuning_duration_s"] >= 0.8
    assert any(key.startswith("system/cpu_utilization") for key in children["finetuning"].data.metrics)
    for key in [*parent.data.metrics, *(k for c in children.values() for k in c.data.metrics)]:
        _validate_metric_name(key)

    summary = mlflow.artifacts.download_artifacts(
        run_id=children["evaluation"].info.run_id, artifact_path="evaluation/summary.json",
        dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_server.url,
    )  # fmt: skip
    assert '"phase": "evaluation"' in Path(summary).read_text()

    materialization = result.asset_materializations_for_node("evaluated")[0]
    meta = materialization.metadata
    assert meta["mlflow_run_id"] == dg.MetadataValue.text(children["evaluation"].info.run_id)
    assert meta["mlflow_parent_run_id"] == dg.MetadataValue.text(parent.info.run_id)
    assert isinstance(meta["mlflow_run_url"], dg.UrlMetadataValue)
    assert meta["mlflow_run_url"].url.startswith(f"{mlflow_server.url}/#/experiments/")
    assert instance.get_run_by_id(result.run_id).tags[DAGSTER_TAG_PARENT_RUN] == parent.info.run_id

    # Secret audit: the server's database and artifacts, and the Dagster event log.
    assert _files_containing(mlflow_server.root, secrets) == []
    assert _event_log_hits(instance, result.run_id, secrets, skip=set()) == []


def test_failing_phase_fails_child_and_parent_and_reraises(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    experiment = f"fail-{uuid.uuid4().hex}"
    tracking = MlflowTracking(
        tracking_uri=mlflow_server.url, experiment_name=experiment, log_system_metrics=False
    )
    result = _materialize(
        tracking, Plan(base_dir=str(tmp_path), fail_phase="evaluation"), raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "evaluated"
    # Dagster wraps the phase's exception; the exception itself arrives unchanged.
    assert failure.event_specific_data.error.cause.message == "RuntimeError: evaluation failed on purpose \n"

    parent, children = _tree(mlflow_server.url, experiment, result.run_id)
    failed = children["evaluation"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error_message"] == "RuntimeError: evaluation failed on purpose "
    trace = Path(
        mlflow.artifacts.download_artifacts(
            run_id=failed.info.run_id,
            artifact_path="error/traceback.txt",
            dst_path=str(tmp_path / "dl"),
            tracking_uri=mlflow_server.url,
        )
    ).read_text()
    assert "Traceback" in trace and "RuntimeError: evaluation failed on purpose" in trace
    assert parent.info.status == "FAILED"
    assert parent.data.tags["ft_assets.failed_phase"] == "evaluation"
    assert all(
        children[p].info.status == "FINISHED" for p in ("finetuning", "inference", "baseline_inference")
    )


def test_secret_audit_on_a_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = _fake_secrets(monkeypatch)
    store = tmp_path / "store"
    tracking = MlflowTracking(
        tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
        experiment_name="audit",
        extra_tags={"leak": secrets[2]},
        log_system_metrics=False,
    )
    plan = Plan(base_dir=str(tmp_path / "project"), secret=" ".join(secrets), fail_phase="evaluation")
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(tracking, plan, instance=instance, raise_on_error=False)
    assert not result.success
    _, children = _tree(f"sqlite:///{store / 'mlflow.db'}", "audit", result.run_id)
    assert (
        children["evaluation"]
        .data.tags["error_message"]
        .startswith("RuntimeError: evaluation failed on purpose ***")
    )
    assert (store / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
    assert _files_containing(store, secrets) == []
    # The phase's own exception reaches Dagster unchanged (that is its error to show); nothing else may.
    assert _event_log_hits(instance, result.run_id, secrets, skip={"STEP_FAILURE", "PIPELINE_FAILURE"}) == []


def test_server_down_is_a_clear_error_unless_tracking_is_optional(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    plan = Plan(base_dir=str(tmp_path))
    with pytest.raises(TrackingUnavailableError, match=rf"{closed} \(from resource config tracking_uri\)"):
        _materialize(MlflowTracking(tracking_uri=closed), plan, selection=["trained"])

    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(MlflowTracking(tracking_uri=closed, required=False), plan, instance=instance)
    assert result.success
    assert result.asset_materializations_for_node("evaluated")[0].metadata == {}
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level >= 30]
    assert any("MLflow tracking is off" in w and closed in w for w in warnings)


def test_environment_overrides_resource_config(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = f"env-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    tracking = MlflowTracking(
        tracking_uri=f"http://127.0.0.1:{free_port()}", experiment_name="ignored", log_system_metrics=False
    )
    result = _materialize(tracking, Plan(base_dir=str(tmp_path)), selection=["trained"])
    _, children = _tree(mlflow_server.url, experiment, result.run_id)
    assert list(children) == ["finetuning"]
    assert MlflowClient(mlflow_server.url).get_experiment_by_name("ignored") is None


def test_invalid_run_name_is_rejected_before_any_work(tmp_path: Path) -> None:
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", run_name="nightly/run#1")
    with pytest.raises(ConfigError, match=r"resource config run_name.*'#/'"):
        _materialize(tracking, Plan(base_dir=str(tmp_path)), selection=["trained"])
    assert not (tmp_path / "m.db").exists()


def test_multiprocess_executor_shares_one_parent(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    experiment = f"multi-{uuid.uuid4().hex}"
    run_config = {
        "resources": {
            "mlflow_tracking": {
                "config": {"mlflow_tracking_uri": mlflow_server.url, "experiment_name": experiment,
                           "log_system_metrics": False}
            },
            "plan": {"config": {"base_dir": str(tmp_path)}},
        }
    }  # fmt: skip
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.execute_job(
            dg.reconstructable(multiprocess_job), instance=instance, run_config=run_config
        )
        assert result.success
        starts = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
        step_pids = {entry.dagster_event.pid for entry in starts}
    parent, children = _tree(mlflow_server.url, experiment, result.run_id)
    # Each step ran in its own process, at the same time, yet both found the same parent.
    assert len(step_pids) == 2 and os.getpid() not in step_pids
    assert sorted(children) == ["baseline_inference", "finetuning"]
    assert parent.info.status == "FINISHED"
    assert all(child.info.status == "FINISHED" for child in children.values())


def test_failure_sensor_fails_the_parent_after_a_non_phase_step_fails(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    experiment = f"sensor-{uuid.uuid4().hex}"
    tracking = MlflowTracking(
        tracking_uri=mlflow_server.url, experiment_name=experiment, log_system_metrics=False
    )
    instance = dg.DagsterInstance.ephemeral()
    plan = Plan(base_dir=str(tmp_path), fail_report=True)
    result = _materialize(tracking, plan, instance=instance, raise_on_error=False)
    assert not result.success
    parent, _ = _tree(mlflow_server.url, experiment, result.run_id)
    assert parent.info.status == "FINISHED"  # every phase succeeded; only `report` failed

    failure = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0].dagster_event
    context = dg.build_run_status_sensor_context(
        sensor_name="mlflow_run_failure_sensor",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    ).for_run_failure()
    mlflow_run_failure_sensor(context)
    parent = MlflowClient(mlflow_server.url).get_run(parent.info.run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["ft_assets.failed_phase"] == "orchestrator"
    assert result.run_id in parent.data.tags["error_message"]


def test_sqlite_runs_link_to_the_mlflow_ui_named_by_mlflow_ui_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", log_system_metrics=False)
    plan = Plan(base_dir=str(tmp_path))
    without = _materialize(tracking, plan, selection=["trained"]).asset_materializations_for_node("trained")[
        0
    ]
    assert "mlflow_run_url" not in without.metadata
    monkeypatch.setenv("MLFLOW_UI_URL", "http://127.0.0.1:5000/")
    result = _materialize(tracking, plan, selection=["trained"])
    metadata = result.asset_materializations_for_node("trained")[0].metadata
    run_id = metadata["mlflow_run_id"].value
    assert metadata["mlflow_run_url"].value.startswith("http://127.0.0.1:5000/#/experiments/")
    assert metadata["mlflow_run_url"].value.endswith(f"/runs/{run_id}")
