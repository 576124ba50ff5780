"""``ft-pipeline --sweep`` refuses a bad sweep before anything runs, with a message naming what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ft_assets import cli


def launch(config: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = cli.main(["--sweep", "--config", str(config), "--dagster-home", str(home)])
    return status, capsys.readouterr().err


def nothing_ran(home: Path) -> bool:
    if not (home / "dagster.yaml").exists():
        return True
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return not instance.get_runs() and not instance.get_dynamic_partitions("sweep_candidates")
    finally:
        instance.dispose()


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            {"grid": {"rnak": [8, 16]}},
            "[sweep] grid: unknown key 'rnak': not a [fine_tuner] key (did you mean 'rank'?)",
        ),
        ({"grid": {"rank": []}}, "[sweep] grid: rank = [] is empty"),
        (
            {"grid": {"learning_rate": ["fast"]}},
            "[sweep] grid: learning_rate = 'fast': Input should be a valid number",
        ),
        ({}, "[sweep] there is no sweep: add a [sweep.grid] table"),
        (
            {"grid": {"method": ["full"], "load_in_8bit": [True]}},
            "[sweep] candidate mfull-li81 (method = 'full', load_in_8bit = True): [fine_tuner] method = 'full'",
        ),
    ],
    ids=["unknown-key", "empty-list", "wrong-type", "no-grid", "invalid-candidate"],
)
def test_an_invalid_sweep_fails_before_anything_runs(
    write_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: dict[str, Any], message: str
) -> None:
    config = write_config({"sweep": sweep} if sweep else None)
    status, err = launch(config, tmp_path / "home", capsys)
    assert status == 1
    assert err.startswith("ft-pipeline: error: ") and message in err
    assert nothing_ran(tmp_path / "home")


def test_a_candidate_whose_dataset_is_missing_fails_preflight_naming_it(
    write_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-train.jsonl"
    config = write_config({"sweep": {"grid": {"training_data_id": [str(missing)]}}})
    status, err = launch(config, tmp_path / "home", capsys)
    assert status == 1
    assert "sweep candidate tdino-such-train.jsonl: preflight:" in err and str(missing) in err
    assert "training_data_id" in err
    assert nothing_ran(tmp_path / "home")


def test_a_sweep_refuses_to_skip_a_phase(
    write_config: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config({"sweep": {"grid": {"rank": [4, 8]}}})
    status = cli.main(
        ["--sweep", "--skip-evaluation", "--config", str(config), "--dagster-home", str(tmp_path / "home")]
    )
    err = capsys.readouterr().err
    assert status == 1 and "a sweep runs every phase of every candidate" in err and "evaluation:" in err
    assert nothing_ran(tmp_path / "home")
