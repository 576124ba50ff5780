"""A new user's first hour: a config of only the two dataset keys runs the chain; the run log shows progress;
the UI's staleness is honest; the parent MLflow run holds the resolved config and opens in the training view.

One chain run (module fixture) of a config that names only the datasets, plus, as the issue allows for the
tiny model, ``base_model_id`` and ``max_steps``; every other key keeps its default.
"""

from __future__ import annotations

import json
import math
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from mlflow.tracking import MlflowClient
from safetensors import safe_open

from ft_assets import secrets
from ft_assets.automation import dataset_change_sensor
from ft_assets.cache import default_model_cache_dir
from ft_assets.config import build_settings, load_settings
from ft_assets.definitions import defs
from ft_assets.jobs import PIPELINE_ASSETS
from ft_assets.resources.settings import PipelineSettings
from ft_assets.tracking_options import EXPERIMENT_KIND_TAG, RESOLVED_CONFIG_ARTIFACT, TRAINING_EXPERIMENT_KIND
from ft_assets.tracking_store import resolved_config_toml
from ft_assets_tests.helpers import pipeline_resources

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"
MAX_STEPS = 2


@dataclass
class ChainRun:
    folder: Path
    config: Path
    instance: dg.DagsterInstance
    result: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def minimal_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: object) -> ChainRun:
    """The whole chain from a config holding the two dataset keys (+ the tiny model and a few steps)."""
    folder = tmp_path_factory.mktemp("my_project")
    for name in ("train.jsonl", "test.jsonl"):
        shutil.copy(DEMO / name, folder / name)
    config = folder / "my.toml"
    config.write_text(
        "[fine_tuner]\n"
        'training_data_id = "train.jsonl"\n'
        'base_model_id = "embedded:tiny-llama"\n'
        f"max_steps = {MAX_STEPS}\n"
        "[inferencer]\n"
        'testing_data_id = "test.jsonl"\n'
    )
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("fine_tune_pipeline").execute_in_process(
        instance=instance, resources=pipeline_resources(config)
    )
    return ChainRun(folder, config, instance, result)


def messages(run: ChainRun, step: str) -> list[str]:
    return [
        e.user_message
        for e in run.instance.all_logs(run.result.run_id)
        if e.step_key == step and e.dagster_event is None and e.level == 20  # INFO, from context.log
    ]


def test_a_config_of_only_the_dataset_keys_runs_the_chain(minimal_run: ChainRun) -> None:
    assert minimal_run.result.success
    report = minimal_run.result.output_for_node("evaluation_report")
    # no validation set was invented, the primary metric is the first default metric
    assert report.primary_metric == "bleu_score"
    assert set(report.summary) == {"bleu_score", "rouge_score", "exact_match"}
    tuned = minimal_run.result.output_for_node("fine_tuned_model")
    assert tuned.data_versions["validation"] is None
    # the embedded model came from the user-level cache, not from a folder of this project
    base = minimal_run.result.output_for_node("base_model")
    assert base.path.parent == default_model_cache_dir()
    assert not (minimal_run.folder / "artifacts" / "base_model").exists()
    assert (minimal_run.folder / "mlflow.db").is_file()


def test_the_run_log_shows_training_and_inference_progress(minimal_run: ChainRun) -> None:
    training = [m for m in messages(minimal_run, "fine_tuned_model") if m.startswith("training")]
    assert training[0] == f"training: {MAX_STEPS} steps; a line every 5 steps"
    adapter = Path(minimal_run.result.output_for_node("fine_tuned_model").path)
    logged = [entry for entry in json.loads((adapter / "log_history.json").read_text()) if "loss" in entry]
    assert logged, "the trainer logged no loss"
    assert len(training) == 1 + len(logged)
    for line, entry in zip(training[1:], logged, strict=True):
        assert line.startswith(f"training step {entry['step']}/{MAX_STEPS}: loss {entry['loss']:.4f}, ")
        assert f"learning rate {entry['learning_rate']:.2e}, " in line
        assert " tokens/s, elapsed " in line and ", ETA " in line
    for step, label in (("inference_results", "inference"), ("base_inference_results", "baseline_inference")):
        lines = [m for m in messages(minimal_run, step) if m.startswith(f"{label}:")]
        assert lines[0] == f"{label}: 60 rows in 4 batches of up to 16"
        assert lines[-1].startswith(f"{label}: 60/60 rows (100%), ") and "rows/s, elapsed" in lines[-1]


def stale_statuses(instance: dg.DagsterInstance) -> dict[str, StaleStatus]:
    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    return {key.to_user_string(): resolver.get_status(key) for key in pipeline_asset_keys()}


def pipeline_asset_keys() -> set[dg.AssetKey]:
    """The chain's materializable assets (the sweep group is materialized by sweeps only)."""
    graph = defs.resolve_asset_graph()
    return PIPELINE_ASSETS.resolve(graph) & graph.materializable_asset_keys


def sensor_tick(run: ChainRun, cursor: str | None) -> dg.SensorResult:
    """One evaluation of the dataset sensor, its observations recorded as the daemon records them."""
    with dg.build_sensor_context(  # the daemon's way: the settings resource opens a secret scope
        instance=run.instance,
        cursor=cursor,
        definitions=defs,
        resources={"settings": PipelineSettings(config_path=str(run.config))},
    ) as context:
        result = dataset_change_sensor(context)
    assert isinstance(result, dg.SensorResult)
    for event in result.asset_events:
        run.instance.report_runless_asset_event(event)
    return result


def test_an_unchanged_dataset_never_marks_anything_stale(minimal_run: ChainRun) -> None:
    everything = {key.to_user_string() for key in pipeline_asset_keys()}
    assert stale_statuses(minimal_run.instance) == dict.fromkeys(everything, StaleStatus.FRESH)
    baseline = sensor_tick(minimal_run, None)
    assert not baseline.run_requests
    assert stale_statuses(minimal_run.instance) == dict.fromkeys(everything, StaleStatus.FRESH)
    again = sensor_tick(minimal_run, baseline.cursor)
    assert not again.run_requests
    assert stale_statuses(minimal_run.instance) == dict.fromkeys(everything, StaleStatus.FRESH)

    # the check can fail: a changed test set makes what reads it stale, and only that (Dagster reports
    # the assets further down, still fed by unchanged inputs, as fresh until those rematerialize)
    with (minimal_run.folder / "test.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "new", "question": "Q?", "answer": "A"}) + "\n")
    changed = sensor_tick(minimal_run, baseline.cursor)
    assert len(changed.run_requests) == 1
    stale = {
        name for name, status in stale_statuses(minimal_run.instance).items() if status != StaleStatus.FRESH
    }
    assert stale == {"inference_results", "base_inference_results", "evaluation_report"}


def test_the_parent_run_holds_the_resolved_config_and_opens_in_the_training_view(
    minimal_run: ChainRun,
) -> None:
    client = MlflowClient(f"sqlite:///{minimal_run.folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fine-tune-pipeline")
    assert experiment is not None and experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT_KIND
    metadata = minimal_run.result.asset_materializations_for_node("fine_tuned_model")[0].metadata
    parent = client.get_run(metadata["mlflow_parent_run_id"].value)
    local = client.download_artifacts(parent.info.run_id, RESOLVED_CONFIG_ARTIFACT, str(minimal_run.folder))
    resolved = build_settings(tomllib.loads(Path(local).read_text()), base_dir=minimal_run.folder)
    assert resolved == load_settings(minimal_run.config)
    assert (
        resolved.evaluator.primary_metric == "bleu_score" and resolved.fine_tuner.validation_data_id is None
    )


@pytest.mark.parametrize("password", ["data", "true", "fine_tuner", "0.05"])
def test_the_resolved_config_survives_hostile_secret_values(
    write_config: Any, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.setenv("FT_ASSETS_TEST_SECRET_SUFFIX", "suffix-9f4c")
    # expansions register their values as secrets for the process: keep this test's own to itself
    monkeypatch.setattr(secrets, "_registered", set())
    config = write_config({"mlflow": {"run_name_suffix": "${FT_ASSETS_TEST_SECRET_SUFFIX}"}})
    settings = load_settings(config)
    text = resolved_config_toml(settings)
    assert "suffix-9f4c" not in text and "${FT_ASSETS_TEST_SECRET_SUFFIX}" in text
    assert build_settings(tomllib.loads(text), base_dir=settings.base_dir) == settings


def test_fine_tuned_model_metadata_shows_the_loss_curve_and_trainable_parameters(
    minimal_run: ChainRun,
) -> None:
    metadata = minimal_run.result.asset_materializations_for_node("fine_tuned_model")[0].metadata
    adapter = Path(minimal_run.result.output_for_node("fine_tuned_model").path)
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as weights:
        lora_parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    assert metadata["trainable_params"].value == lora_parameters
    assert 0 < metadata["trainable_params"].value < metadata["total_params"].value
    log_history = json.loads((adapter / "log_history.json").read_text())
    table = metadata["loss_curve"].value.splitlines()
    assert table[0] == "| step | train loss | validation loss |"
    assert table[2:] == [f"| {e['step']} | {e['loss']:.4f} |  |" for e in log_history if "loss" in e]
