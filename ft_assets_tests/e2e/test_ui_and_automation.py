"""The Dagster UI and the dataset sensor, for real: ``dagster dev`` with its daemon, headless Chromium, an
MLflow server. The tests run in file order and build on each other (one server for the module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from ft_assets.automation import DATA_VERSION_TAG_PREFIX
from ft_assets.phases.dataset_files import data_version
from ft_assets_tests.e2e.conftest import LOCATION, PROJECT_ROOT, SENSOR_INTERVAL_S, DagsterDev
from ft_assets_tests.mlflow_server import MlflowServer

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 300.0
TRACKED_ASSETS = ("fine_tuned_model", "inference_results", "evaluation_report")
TRAINING_CHAIN = {"fine_tuned_model", "inference_results", "evaluation_report", "promoted_model"}
#: Set to a path (e.g. docs/asset-graph.png) to keep the asset graph screenshot there.
SCREENSHOT_ENV = "FT_ASSETS_SCREENSHOT"

RUNS = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs { results {
  runId status tags { key value } assetSelection { path } } } } }"""
TICKS = """query Ticks($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  ... on Sensor { sensorState { status ticks(limit: 50) { id status timestamp skipReason runIds } } } } }"""
LATEST_MATERIALIZATION = """query Latest($key: AssetKeyInput!) { assetOrError(assetKey: $key) {
  ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries { label
    ... on UrlMetadataEntry { url } ... on TextMetadataEntry { text } } } } } }"""
SENSOR = {
    "repositoryLocationName": LOCATION,
    "repositoryName": "__repository__",
    "sensorName": "dataset_change_sensor",
}


def runs(dev: DagsterDev, **tags: str) -> list[dict[str, Any]]:
    run_filter = {"tags": [{"key": key, "value": value} for key, value in tags.items()]}
    return dev.graphql(RUNS, filter=run_filter)["runsOrError"]["results"]


def finished_run(dev: DagsterDev, run_id: str) -> dict[str, Any]:
    """Wait for the run to end; it must have succeeded."""

    def probe() -> dict[str, Any] | None:
        run = next(r for r in runs(dev) if r["runId"] == run_id)
        return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    run = dev.wait_for(f"run {run_id} to finish", probe, RUN_TIMEOUT_S)
    assert run["status"] == "SUCCESS", f"run {run_id} ended {run['status']}; see {dev.log}"
    return run


def ticks(dev: DagsterDev) -> list[dict[str, Any]]:
    state = dev.graphql(TICKS, selector=SENSOR)["sensorOrError"]["sensorState"]
    assert state["status"] == "RUNNING"  # on by default: nobody switched it on
    return state["ticks"]


def metadata(dev: DagsterDev, asset: str) -> tuple[str, dict[str, str]]:
    data = dev.graphql(LATEST_MATERIALIZATION, key={"path": [asset]})
    latest = data["assetOrError"]["assetMaterializations"][0]
    entries = {e["label"]: e.get("url") or e.get("text") for e in latest["metadataEntries"]}
    return latest["runId"], entries


def tags_of(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}


def selection_of(run: dict[str, Any]) -> set[str]:
    return {"/".join(key["path"]) for key in run["assetSelection"]}


def open_page(browser: Any, url: str, height: int = 1000) -> Any:
    page = browser.new_page(viewport={"width": 1600, "height": height})
    # Dagster greets a new instance with a community dialog; dismiss it whenever it shows up.
    skip = page.get_by_role("button", name="Skip")
    page.add_locator_handler(skip, lambda locator: locator.click())
    page.goto(url)
    return page


def test_materialize_all_in_the_asset_graph(
    dagster_dev: DagsterDev, browser: Any, mlflow_server: MlflowServer
) -> None:
    dev = dagster_dev
    # The sensor's first evaluation records the dataset versions before anything changes.
    dev.wait_for(
        "the sensor's baseline tick", lambda: any("baseline" in str(t["skipReason"]) for t in ticks(dev)), 120
    )

    # The pipeline job's page: the global graph's "Materialize all" also covers the partitioned sweep group
    page = open_page(browser, f"{dev.url}/locations/{LOCATION}/jobs/fine_tune_pipeline")
    page.get_by_role("button", name="Materialize all").click()
    page.get_by_text("Launched run").wait_for(timeout=60_000)
    launched = dev.wait_for("the UI's run", lambda: runs(dev, **{"dagster/from_ui": "true"}), 60)
    assert len(launched) == 1
    run = finished_run(dev, launched[0]["runId"])
    assert {"base_model", "base_inference_results"} | TRAINING_CHAIN == selection_of(run)

    for asset in TRACKED_ASSETS:
        run_id, entries = metadata(dev, asset)
        assert run_id == run["runId"]
        assert entries["mlflow_run_url"] == (
            f"{mlflow_server.url}/#/experiments/{_experiment_id(mlflow_server)}/runs/{entries['mlflow_run_id']}"
        )
        # The asset page shows the link.
        page.goto(f"{dev.url}/assets/{asset}")
        link = page.locator(f'a[href="{entries["mlflow_run_url"]}"]').first
        link.wait_for(timeout=60_000)
        assert MlflowClient(mlflow_server.url).get_run(entries["mlflow_run_id"]).info.status == "FINISHED"

    page.close()
    _screenshot_asset_graph(browser, dev)


def _screenshot_asset_graph(browser: Any, dev: DagsterDev) -> None:
    """The whole graph, groups expanded, for the README (``$FT_ASSETS_SCREENSHOT`` keeps it)."""
    page = open_page(browser, f"{dev.url}/asset-groups", height=1150)
    page.get_by_role("button", name="Materialize all").wait_for(timeout=60_000)
    # Fold the asset tree (the toggle right of "Jump to") so the graph gets the width.
    jump = page.get_by_placeholder("Jump to").bounding_box()
    page.mouse.click(jump["x"] + jump["width"] + 20, jump["y"] + jump["height"] / 2)
    page.keyboard.press("Alt+e")  # the graph's "Expand all groups" shortcut
    page.get_by_text("evaluation_report").first.wait_for(timeout=30_000)
    page.mouse.move(1, 1)  # no hover highlight
    page.wait_for_timeout(2000)  # let the layout settle
    target = Path(os.environ.get(SCREENSHOT_ENV) or dev.home.parent / "asset-graph.png")
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000
    page.close()


def _experiment_id(server: MlflowServer) -> str:
    experiment = MlflowClient(server.url).get_experiment_by_name("ft-assets-e2e")
    assert experiment is not None
    return experiment.experiment_id


def test_changed_training_data_reruns_the_chain_with_that_version(
    dagster_dev: DagsterDev, mlflow_server: MlflowServer
) -> None:
    dev = dagster_dev
    train = dev.datasets / "train.jsonl"
    row = json.loads(train.read_text().splitlines()[0])
    row["id"] = "train-e2e-extra"
    with train.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    version = data_version(str(train), base_dir=train.parent)

    launched = dev.wait_for(
        "the sensor's run", lambda: runs(dev, **{"dagster/sensor_name": "dataset_change_sensor"}), 120
    )
    assert len(launched) == 1
    run = finished_run(dev, launched[0]["runId"])
    assert selection_of(run) == TRAINING_CHAIN  # not base_model, not the baseline inference
    assert tags_of(run)[f"{DATA_VERSION_TAG_PREFIX}training_dataset"] == version

    run_id, _ = metadata(dev, "fine_tuned_model")
    assert run_id == run["runId"]
    client = MlflowClient(mlflow_server.url)
    tracked = client.search_runs(
        [_experiment_id(mlflow_server)], filter_string=f"tags.dagster_run_id = '{run['runId']}'"
    )
    parent = next(r for r in tracked if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags[f"{DATA_VERSION_TAG_PREFIX}training_dataset"] == version
    assert parent.data.params["dataset_training_hash"] == version  # what the fine-tuning actually read
    assert version.split(":")[1] in parent.data.params["finetuner_training_data_id"]  # the pinned snapshot


def test_unchanged_datasets_launch_nothing(dagster_dev: DagsterDev) -> None:
    dev = dagster_dev
    before = {r["runId"] for r in runs(dev)}
    latest = max(t["timestamp"] for t in ticks(dev))
    newer = dev.wait_for(
        "three more finished sensor ticks",
        lambda: (lambda found: found if len(found) >= 3 else None)(
            # a tick still being evaluated is STARTED: only finished ones say what the sensor decided
            [t for t in ticks(dev) if t["timestamp"] > latest and t["status"] != "STARTED"]
        ),
        timeout_s=SENSOR_INTERVAL_S * 3 + 60,
    )
    assert all(t["status"] == "SKIPPED" and t["runIds"] == [] for t in newer), newer
    assert all("no dataset changed" in t["skipReason"] for t in newer)
    assert {r["runId"] for r in runs(dev)} == before


def test_a_phase_job_from_the_cli_uses_the_outputs_of_the_ui_runs(dagster_dev: DagsterDev) -> None:
    """``dagster job execute -j evaluation_job`` against the same instance: it loads the latest inference
    results through the IO manager instead of recomputing them."""
    dev = dagster_dev
    env = {**os.environ, "DAGSTER_HOME": str(dev.home), "FT_ASSETS_CONFIG": str(dev.config)}
    command = [str(Path(sys.executable).parent / "dagster"), "job", "execute"]
    completed = subprocess.run(
        [*command, "-m", "ft_assets.definitions", "-j", "evaluation_job"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_id, _ = metadata(dev, "evaluation_report")
    inference_run, _ = metadata(dev, "inference_results")
    sensor_run = runs(dev, **{"dagster/sensor_name": "dataset_change_sensor"})[0]["runId"]
    assert run_id not in (inference_run, sensor_run) and inference_run == sensor_run
