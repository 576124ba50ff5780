"""The chain through the compute launcher: a Pipes subprocess gives what in-process gives, and fine-tuning
under ``accelerate launch`` with two processes (DDP over gloo on the CPU) publishes one adapter that loads
and generates."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
from mlflow.tracking import MlflowClient

from ft_assets.definitions import defs
from ft_assets.execution.launcher import ComputeLauncher
from ft_assets.phases.checkpoints import lock_path
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "fine-tune-pipeline-ci"
GPU_ASSETS = ("fine_tuned_model", "inference_results", "base_inference_results")
SECRETS = {
    "HF_TOKEN": "hf_scalingSecret9f8e7d6c",
    "OPENAI_API_KEY": "sk-scalingSecret1a2b3c4d",
    "MLFLOW_TRACKING_PASSWORD": "mlflowScalingSecret5e6f",
}
#: Metadata whose values depend on timing, not on what was computed.
TIMING_METADATA = {"tokens_per_s", "duration_s", "rows_per_s", "generated_tokens_per_s"}


def run_chain(
    config: Path, instance: dg.DagsterInstance, launcher: ComputeLauncher, job: str = "fine_tune_pipeline"
) -> dg.ExecuteInProcessResult:
    """``job`` of the project's Definitions with ``launcher`` as the compute launcher."""
    resources = {
        "settings": PipelineSettings(config_path=str(config)),
        "mlflow": MlflowTracking(),
        "launcher": launcher,
    }
    scaled = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        resources={**defs.resources, **resources},
    )
    return scaled.resolve_job_def(job).execute_in_process(instance=instance, resources=resources)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mlflow_tree(tracking_uri: str, dagster_run_id: str) -> dict[str, dict[str, Any]]:
    """The MLflow runs of one Dagster run, keyed by role (``parent`` or the child's phase suffix)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], f"tags.dagster_run_id = '{dagster_run_id}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    tree = {"parent": parent}
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id:
            tree[run.info.run_name.removeprefix(f"{parent.info.run_name}_")] = run
    return {
        role: {
            "status": run.info.status,
            # system metrics are sampled on a clock, so which ones exist depends on how long a phase took
            "metrics": {k for k in run.data.metrics if not k.startswith("system/")},
            "params": set(run.data.params),
            "run": run,
        }
        for role, run in tree.items()
    }


def secrets_in_events(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    logs = "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(run_id))
    return [name for name, value in SECRETS.items() if value in logs]


def phase_seconds(result: dg.ExecuteInProcessResult) -> float:
    return sum(
        e.event_specific_data.duration_ms / 1000
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.STEP_SUCCESS and e.step_key in GPU_ASSETS
    )


def test_subprocess_launcher_matches_in_process(write_config: Any, tmp_path: Path, monkeypatch: Any) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    config = write_config({"fine_tuner": {"max_steps": 2}})
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    local = run_chain(config, instance, ComputeLauncher())
    local_s = time.perf_counter() - started
    external = run_chain(config, instance, ComputeLauncher(mode="subprocess"))
    print(
        f"chain wall time: in-process {local_s:.1f} s, subprocess {time.perf_counter() - started - local_s:.1f} s; "
        f"GPU phases: {phase_seconds(local):.1f} s vs {phase_seconds(external):.1f} s"
    )
    assert local.success and external.success

    # Pipes carried the external phases: each one opened it and logged through it
    for result, piped in ((local, False), (external, True)):
        logs = [(e.step_key, e.user_message) for e in instance.all_logs(result.run_id)]
        assert {step for step, message in logs if "opened dagster pipes" in message} == (
            set(GPU_ASSETS) if piped else set()
        )
        assert any(
            step == "fine_tuned_model" and message.startswith("trained 2 steps on 1 x cpu: train loss")
            for step, message in logs
        )
        # progress lines reach the run log from a subprocess as from the step's own process
        assert any(
            step == "fine_tuned_model" and message.startswith("training step 2/2: loss")
            for step, message in logs
        )
        assert any(
            step == "inference_results" and message.startswith("inference: 60/60 rows")
            for step, message in logs
        )

    for asset in GPU_ASSETS:
        mine, theirs = local.output_for_node(asset), external.output_for_node(asset)
        assert type(mine) is type(theirs)
        assert mine.path != theirs.path  # each run writes its own folder
        assert local.asset_materializations_for_node(asset)[0].metadata["output_path"].value == mine.path
        local_meta = local.asset_materializations_for_node(asset)[0].metadata
        external_meta = external.asset_materializations_for_node(asset)[0].metadata
        assert set(local_meta) == set(external_meta)
        for key, value in local_meta.items():
            assert type(value) is type(external_meta[key]), key
            if key not in TIMING_METADATA | {"path", "output_path", "mlflow_run_id", "mlflow_parent_run_id"}:
                assert value == external_meta[key], key

    for asset in ("inference_results", "base_inference_results"):
        local_rows = read_jsonl(local.output_for_node(asset).path)
        assert len(local_rows) == 60
        assert local_rows == read_jsonl(external.output_for_node(asset).path)

    tuned = [Path(r.output_for_node("fine_tuned_model").path) for r in (local, external)]
    assert sorted(p.name for p in tuned[0].iterdir()) == sorted(p.name for p in tuned[1].iterdir())
    assert (tuned[0] / "adapter_model.safetensors").read_bytes() == (
        tuned[1] / "adapter_model.safetensors"
    ).read_bytes()
    versions = [
        r.asset_materializations_for_node("fine_tuned_model")[0].tags["dagster/data_version"]
        for r in (local, external)
    ]
    assert versions[0] == versions[1] == local.output_for_node("fine_tuned_model").fingerprint
    reports = [r.output_for_node("evaluation_report").summary for r in (local, external)]
    assert reports[0] == reports[1]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    local_tree, external_tree = mlflow_tree(uri, local.run_id), mlflow_tree(uri, external.run_id)
    assert set(local_tree) == {"parent", "finetuning", "inference", "baseline_inference", "evaluation"}
    assert set(external_tree) == set(local_tree)
    for role, node in local_tree.items():
        other = external_tree[role]
        assert node["status"] == other["status"] == "FINISHED", role
        assert node["metrics"] == other["metrics"], role
        assert node["params"] == other["params"], role
    finetuning = external_tree["finetuning"]["run"]
    assert finetuning.data.params["processes"] == "1"
    assert "final_train_loss" in finetuning.data.metrics
    client = MlflowClient(uri)
    # the subprocess uploaded the loss curve and logged the adapter as an MLflow model into the child run
    assert "loss_curve.png" in {a.path for a in client.list_artifacts(finetuning.info.run_id)}
    models = client.search_logged_models([finetuning.info.experiment_id])
    sources = {m.source_run_id for m in models if m.name == "fine_tuned_model"}
    assert {local_tree["finetuning"]["run"].info.run_id, finetuning.info.run_id} <= sources

    for result in (local, external):
        assert secrets_in_events(instance, result.run_id) == []
    for node in [*local_tree.values(), *external_tree.values()]:
        logged = json.dumps([node["run"].data.params, node["run"].data.tags])
        assert not [name for name, value in SECRETS.items() if value in logged]


def test_ddp_training_under_accelerate_launch(write_config: Any, tmp_path: Path) -> None:
    from ft_assets.config import load_settings
    from ft_assets.dataset_specs import TESTING
    from ft_assets.phases.datasets import load_configured
    from ft_assets.phases.generation import generate
    from ft_assets.phases.models import load_chat_template

    config = write_config({"fine_tuner": {"max_steps": 2, "per_device_train_batch_size": 2}})
    launcher = ComputeLauncher(mode="subprocess", launcher="accelerate", num_processes=2)
    result = run_chain(config, dg.DagsterInstance.ephemeral(), launcher, job="finetuning_job")
    assert result.success

    tuned = result.output_for_node("fine_tuned_model")
    adapter = Path(tuned.path)
    metadata = result.asset_materializations_for_node("fine_tuned_model")[0].metadata
    assert metadata["processes"].value == 2 and metadata["dropped_rows"].value == 0
    # two data-parallel ranks: each step consumed 2 processes x 2 rows of the training set
    train_rows = len(read_jsonl(PROJECT_ROOT / "data" / "demo" / "train.jsonl"))
    history = json.loads((adapter / "log_history.json").read_text())
    assert history[-1]["epoch"] * train_rows == 2 * 2 * 2
    # only rank 0 published: one output folder, no rank folders left beside it (the checkpoints and their
    # lock files are the training's own)
    locks = lock_path(adapter.parent / "checkpoints", "any").parent.name
    assert sorted(p.name for p in adapter.parent.iterdir()) == sorted([adapter.name, "checkpoints", locks])
    # only rank 0 logged to MLflow: one loss value per step
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = metadata["mlflow_run_id"].value
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
    assert client.get_run(run_id).data.params["processes"] == "2"

    settings = load_settings(config)
    dataset = load_configured(TESTING, settings)
    template = load_chat_template(settings.fine_tuner.chat_template, settings.base_dir)
    generated = generate(
        adapter, dataset, settings.inferencer, tmp_path / "ddp.jsonl", chat_template=template
    )
    rows = read_jsonl(tmp_path / "ddp.jsonl")
    assert generated.rows == len(rows) == 60
    assert sum(row["completion_tokens"] for row in rows) > 0
    assert os.environ.get("RANK") is None  # the launcher's variables never leak into the orchestrator
