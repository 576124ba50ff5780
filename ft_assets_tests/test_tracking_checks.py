"""MLflow's preflight, called directly: names, schemes, file stores, an unreachable store."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_assets.config import ConfigError, build_settings
from ft_assets.phases.preflight_report import PreflightReport
from ft_assets.tracking_checks import (
    MAX_EXPERIMENT_NAME_LENGTH,
    check_experiment_name,
    check_tracking,
)
from ft_assets.tracking_options import TrackingOptions, TrackingUnavailableError

SOURCES = {"experiment_name": "[mlflow] experiment_name", "tracking_uri": "[mlflow] tracking_uri"}


def options(uri: str, name: str = "Expérience 実験", **values: object) -> TrackingOptions:
    return TrackingOptions(uri, name, sources=SOURCES, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("  ", "is blank"),
        ("é" * (MAX_EXPERIMENT_NAME_LENGTH + 1), "is longer than MLflow's 500 characters"),
        ("tab\there", "contains control characters"),
        ("..", "is only dots"),
    ],
)
def test_an_experiment_name_mlflow_refuses_is_named_with_its_source(name: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_experiment_name(options("sqlite:///x.db", name))
    assert str(raised.value).startswith(
        f"[mlflow] experiment_name: the MLflow experiment name {name!r} {problem}"
    )


def test_check_tracking_refuses_unknown_schemes_and_file_stores(tmp_path: Path) -> None:
    settings = build_settings({}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown scheme 'sqlit' \(did you mean 'sqlite'\?\)"):
        check_tracking(settings, options("sqlit:///x.db"), {}, PreflightReport(()))
    with pytest.raises(ConfigError, match="is an MLflow file store, which MLflow 3 refuses"):
        check_tracking(settings, options(str(tmp_path / "mlruns")), {}, PreflightReport(()))
    allowed = PreflightReport(())
    check_tracking(settings, options(str(tmp_path / "mlruns")), {"MLFLOW_ALLOW_FILE_STORE": "true"}, allowed)
    assert allowed.tracked and allowed.passed == [f"MLflow store {tmp_path / 'mlruns'} answers"]


def test_check_tracking_reports_the_store_and_strips_credentials(tmp_path: Path) -> None:
    store = tmp_path / "stores" / "mlflow.db"
    report = PreflightReport(())
    check_tracking(build_settings({}, base_dir=tmp_path), options(f"sqlite:///{store}"), {}, report)
    assert report.tracked and report.tracking_uri == f"sqlite:///{store}"
    assert store.parent.is_dir() and not store.exists()  # the folder the run needs, no database yet

    down = options("http://user:s3cr3t@127.0.0.1:9", required=False)
    report = PreflightReport(())
    check_tracking(build_settings({}, base_dir=tmp_path), down, {}, report)
    assert not report.tracked and report.tracking_uri == "http://127.0.0.1:9"
    (warning,) = report.warnings
    assert "not reachable" in warning and "required = false" in warning and "s3cr3t" not in warning
    with pytest.raises(TrackingUnavailableError, match="not reachable"):
        check_tracking(build_settings({}, base_dir=tmp_path), options("http://127.0.0.1:9"), {}, report)
