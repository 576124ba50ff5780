"""The dataset-change sensor, evaluated against a real Dagster instance (no daemon: see e2e/ for that)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ft_assets.automation import (
    DATA_VERSION_TAG_PREFIX,
    INTERVAL_ENV,
    dataset_change_sensor,
    sensor_interval_s,
    snapshot_dataset,
)
from ft_assets.definitions import defs
from ft_assets.phases.dataset_files import DatasetError, data_version
from ft_assets.resources.settings import PipelineSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO = PROJECT_ROOT / "data" / "demo"
TRAINING_CHAIN = {"fine_tuned_model", "inference_results", "evaluation_report", "promoted_model"}
TEST_DATA_CHAIN = {"inference_results", "base_inference_results", "evaluation_report", "promoted_model"}


class SensorHarness:
    """Evaluates the sensor like the daemon does: one tick after another, carrying the cursor."""

    def __init__(self, instance: dg.DagsterInstance, config: Path) -> None:
        self.instance = instance
        self.settings = PipelineSettings(config_path=str(config))
        self.cursor: str | None = None

    def tick(self) -> dg.SensorResult:
        with dg.build_sensor_context(  # the daemon's way: the settings resource opens a secret scope
            instance=self.instance,
            cursor=self.cursor,
            definitions=defs,
            resources={"settings": self.settings},
        ) as context:
            result = dataset_change_sensor(context)
        assert isinstance(result, dg.SensorResult)
        if result.cursor is not None:
            self.cursor = result.cursor
        return result


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    """Copies of the demo datasets that a test may edit."""
    folder = tmp_path / "datasets"
    folder.mkdir()
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        shutil.copy(DEMO / name, folder / name)
    return folder


@pytest.fixture
def harness(tmp_path: Path, datasets: Path, write_config: Callable[..., Path]) -> SensorHarness:
    config = write_config(
        {
            "fine_tuner": {
                "training_data_id": str(datasets / "train.jsonl"),
                "validation_data_id": str(datasets / "validation.jsonl"),
            },
            "inferencer": {"testing_data_id": str(datasets / "test.jsonl")},
        }
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    return SensorHarness(dg.DagsterInstance.from_config(str(home)), config)


def append_row(path: Path, suffix: str) -> None:
    """A new, valid row: the first row under a new id."""
    row = json.loads(path.read_text().splitlines()[0])
    row["id"] = f"{row['id']}-{suffix}"
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def mark_materialized(instance: dg.DagsterInstance, names: set[str] | None = None) -> None:
    """Record materializations of the phase assets, as a completed chain would have left them."""
    graph = defs.resolve_asset_graph()
    keys = [key for key in graph.materializable_asset_keys if names is None or key.to_user_string() in names]
    for key in keys:
        instance.report_runless_asset_event(dg.AssetMaterialization(key))


def selection(request: dg.RunRequest) -> set[str]:
    return {key.to_user_string() for key in request.asset_selection or []}


def settings_overrides(request: dg.RunRequest) -> dict[str, Any]:
    return request.run_config["resources"]["settings"]["config"]


def test_first_tick_records_a_baseline_and_an_unchanged_dataset_launches_nothing(
    harness: SensorHarness,
) -> None:
    first = harness.tick()
    assert not first.run_requests
    assert "baseline" in str(first.skip_reason)
    observed = {
        event.asset_key.to_user_string(): event.tags["dagster/data_version"] for event in first.asset_events
    }
    assert observed == {
        "training_dataset": data_version(str(DEMO / "train.jsonl"), base_dir=DEMO),
        "validation_dataset": data_version(str(DEMO / "validation.jsonl"), base_dir=DEMO),
        "testing_dataset": data_version(str(DEMO / "test.jsonl"), base_dir=DEMO),
    }
    for _ in range(2):
        again = harness.tick()
        assert not again.run_requests and not again.asset_events
        assert "no dataset changed" in str(again.skip_reason)


@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        ("train.jsonl", TRAINING_CHAIN),
        ("validation.jsonl", TRAINING_CHAIN),
        ("test.jsonl", TEST_DATA_CHAIN),
    ],
)
def test_a_changed_dataset_reruns_exactly_what_depends_on_it(
    harness: SensorHarness, datasets: Path, edited: str, expected: set[str]
) -> None:
    mark_materialized(harness.instance)
    harness.tick()
    append_row(datasets / edited, "new")
    result = harness.tick()
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert selection(request) == expected
    new_version = data_version(str(datasets / edited), base_dir=datasets)
    changed_asset = {"train.jsonl": "training_dataset", "validation.jsonl": "validation_dataset"}.get(
        edited, "testing_dataset"
    )
    assert request.tags[f"{DATA_VERSION_TAG_PREFIX}{changed_asset}"] == new_version
    assert [e.asset_key.to_user_string() for e in result.asset_events] == [changed_asset]
    assert result.asset_events[0].tags["dagster/data_version"] == new_version
    # The MLflow runs get the same tags through the tracking resource's config.
    assert request.run_config["resources"]["mlflow"]["config"]["extra_tags"] == request.tags
    # Recorded as the new baseline: the next tick launches nothing.
    assert not harness.tick().run_requests


def test_the_run_reads_the_exact_observed_content_even_if_the_file_changes_again(
    harness: SensorHarness, datasets: Path
) -> None:
    mark_materialized(harness.instance)
    harness.tick()
    train = datasets / "train.jsonl"
    append_row(train, "v2")
    observed_bytes = train.read_bytes()
    request = harness.tick().run_requests[0]
    append_row(train, "v3")  # after the observation, before the run reads it

    overrides = settings_overrides(request)
    assert overrides["config_path"] == harness.settings.config_path
    pinned = Path(overrides["fine_tuner"]["training_data_id"])
    assert pinned.read_bytes() == observed_bytes
    assert pinned.name == "train.jsonl"  # the extension still tells the loader the format
    version = request.tags[f"{DATA_VERSION_TAG_PREFIX}training_dataset"]
    assert version == data_version(str(pinned), base_dir=pinned.parent) == f"sha256:{pinned.parent.name}"
    # The settings the run will load point at the snapshots, with the file's other keys unchanged.
    resolved = PipelineSettings(**overrides).load()
    assert resolved.fine_tuner.training_data_id == str(pinned)
    assert resolved.fine_tuner.max_steps == harness.settings.load().fine_tuner.max_steps
    assert Path(resolved.inferencer.testing_data_id).read_bytes() == (DEMO / "test.jsonl").read_bytes()


def test_snapshots_are_content_addressed_and_reused(tmp_path: Path) -> None:
    source = tmp_path / "train.jsonl"
    source.write_text('{"question": "q", "answer": "a"}\n')
    version, copy = snapshot_dataset(source, tmp_path / "snapshots")
    assert copy.read_bytes() == source.read_bytes() and version == f"sha256:{copy.parent.name}"
    copy_mtime = copy.stat().st_mtime_ns
    assert snapshot_dataset(source, tmp_path / "snapshots") == (version, copy)
    assert copy.stat().st_mtime_ns == copy_mtime  # reused, not rewritten
    source.write_text('{"question": "q2", "answer": "a2"}\n')
    other_version, other_copy = snapshot_dataset(source, tmp_path / "snapshots")
    assert other_version != version and other_copy.parent != copy.parent
    assert copy.read_text() == '{"question": "q", "answer": "a"}\n'
    assert not [p for p in (tmp_path / "snapshots").iterdir() if p.name.startswith(".staging")]


def test_never_materialized_inputs_join_the_run(harness: SensorHarness, datasets: Path) -> None:
    """A changed test set before any fine-tuning: the run also builds what inference needs."""
    harness.tick()
    append_row(datasets / "test.jsonl", "new")
    request = harness.tick().run_requests[0]
    assert selection(request) == TEST_DATA_CHAIN | {"base_model", "fine_tuned_model"}


def test_a_hub_dataset_is_versioned_by_its_revision_without_a_snapshot(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config(
        {"inferencer": {"testing_data_id": "some-org/eval-set", "dataset_revision": "abc123"}}
    )
    harness = SensorHarness(dg.DagsterInstance.ephemeral(), config)
    mark_materialized(harness.instance)
    baseline = harness.tick()
    versions = {e.asset_key.to_user_string(): e.tags["dagster/data_version"] for e in baseline.asset_events}
    assert versions["testing_dataset"] == "hf:abc123"
    text = config.read_text().replace('"abc123"', '"def456"')
    config.write_text(text)
    request = harness.tick().run_requests[0]
    assert selection(request) == TEST_DATA_CHAIN
    assert request.tags[f"{DATA_VERSION_TAG_PREFIX}testing_dataset"] == "hf:def456"
    assert "testing_data_id" not in settings_overrides(request).get("inferencer", {})


def test_a_missing_dataset_fails_the_tick_with_the_path(harness: SensorHarness, datasets: Path) -> None:
    harness.tick()
    (datasets / "train.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"dataset file not found: .*train\.jsonl"):
        harness.tick()


def test_the_sensor_is_on_by_default_and_its_interval_comes_from_the_environment(monkeypatch) -> None:
    sensor = defs.resolve_sensor_def("dataset_change_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "fine_tune_pipeline"
    monkeypatch.setenv(INTERVAL_ENV, "7")
    assert sensor_interval_s() == 7
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=f"{INTERVAL_ENV}='soon'"):
        sensor_interval_s()
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with pytest.raises(ValueError, match="at least 1 second"):
        sensor_interval_s()
