"""A sweep in the Dagster UI, for real: ``ft-pipeline --sweep`` against the instance ``dagster dev`` serves,
then headless Chromium shows the candidates as partitions and the leaderboard table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from ft_assets.config import read_toml
from ft_assets_tests.e2e.conftest import PROJECT_ROOT, DagsterDev
from ft_assets_tests.e2e.test_ui_and_automation import open_page
from ft_assets_tests.reliability.support import demo_rows

pytestmark = pytest.mark.e2e

#: Set to a path (e.g. docs/sweep.png) to keep the leaderboard screenshot there (and the partitions beside
#: it, as sweep-partitions.png).
SCREENSHOT_ENV = "FT_ASSETS_SWEEP_SCREENSHOT"
CANDIDATES = ("ms1", "ms2")


def _sweep(dev: DagsterDev) -> dict[str, Any]:
    """``ft-pipeline --sweep --json`` of the server's config plus a two-candidate [sweep]."""
    data = read_toml(dev.config)
    data["sweep"] = {"name": "ui", "grid": {"max_steps": [1, 2]}}
    data["inferencer"]["testing_data_id"] = str(demo_rows(dev.home.parent / "sweep-test.jsonl", 0, 8))
    data["mlflow"]["log_model"] = False
    config = dev.home.parent / "sweep.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ft-pipeline"), "--sweep", "--config", str(config), "--json"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DAGSTER_HOME": str(dev.home), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


def test_the_ui_shows_the_candidates_as_partitions_and_the_leaderboard(
    dagster_dev: DagsterDev, browser: Any
) -> None:
    result = _sweep(dagster_dev)
    assert sorted(result["ran"]) == list(CANDIDATES)

    page = open_page(browser, f"{dagster_dev.url}/assets/sweep_evaluation_report?view=partitions")
    page.get_by_text(f"Materialized ({len(CANDIDATES)})").wait_for(timeout=60_000)
    for name in CANDIDATES:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    target = Path(os.environ.get(SCREENSHOT_ENV) or dagster_dev.home.parent / "sweep.png")
    page.mouse.move(1, 1)
    page.screenshot(path=str(target.with_name(f"{target.stem}-partitions.png")))

    page.goto(f"{dagster_dev.url}/assets/sweep_leaderboard")
    # the leaderboard metadata entry renders as a table: headers and one row per candidate
    page.get_by_role("cell", name="vs leader (paired)").wait_for(timeout=60_000)
    for name in CANDIDATES:
        page.get_by_role("cell", name=name, exact=True).first.wait_for(timeout=30_000)
    winner = result["leaderboard"]["winner"]
    page.get_by_text(f"winner: {winner}").first.wait_for(timeout=30_000)
    page.mouse.move(1, 1)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000
    page.close()
