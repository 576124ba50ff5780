"""Release gates, the asset checks built on them, and promotion to an MLflow registry alias."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ft_assets.definitions import defs
from ft_assets.phases.gates import completeness_gate, not_worse_gate, threshold_gate
from ft_assets_tests.helpers import pipeline_resources

SUMMARY = {"rouge_score": {"mean": 0.6}, "exact_match": {"mean": 0.2}}


def test_threshold_gate() -> None:
    assert threshold_gate(SUMMARY, {"rouge_score": 0.5}).passed
    failed = threshold_gate(SUMMARY, {"rouge_score": 0.5, "exact_match": 0.3})
    assert not failed.passed and failed.details["failing"] == ["exact_match"]
    assert not threshold_gate({"rouge_score": {"mean": math.nan}}, {"rouge_score": 0.0}).passed


def test_not_worse_gate() -> None:
    assert not_worse_gate(SUMMARY, {"rouge_score": {"mean": 0.6}}, "rouge_score").passed
    worse = not_worse_gate(SUMMARY, {"rouge_score": {"mean": 0.7}}, "rouge_score")
    assert not worse.passed and worse.details["delta"] == pytest.approx(-0.1)
    assert not_worse_gate(SUMMARY, None, "rouge_score").passed


def test_completeness_gate() -> None:
    assert completeness_gate(60, 60, 0, 0.0).passed
    assert not completeness_gate(59, 60, 0, 0.0).passed
    assert not completeness_gate(60, 60, 7, 0.1).passed
    assert completeness_gate(60, 60, 6, 0.1).passed


def _materialize(config: Path, instance: dg.DagsterInstance, selection: list[str] | None = None) -> Any:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        instance=instance,
        resources=pipeline_resources(config),
        selection=selection,
        raise_on_error=False,
    )


def test_promotion_follows_the_gates(write_config: Any, tmp_path: Path) -> None:
    passing = write_config(
        {
            "evaluator": {
                "register_model": True,
                "registered_model_name": "tiny",
                "blocking_checks": True,
                "thresholds": {"rouge_score": 0.0},
            }
        },
        name="passing.toml",
    )
    with dg.instance_for_test() as instance:
        first = _materialize(passing, instance)
        assert first.success
        promoted = first.output_for_node("promoted_model")
        assert promoted == {"registered": True, "name": "tiny", "version": "1", "alias": "champion"}
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"

        # An impossible threshold with blocking checks: the check fails with ERROR and promotion does not run.
        failing = write_config(
            {
                "evaluator": {
                    "register_model": True,
                    "registered_model_name": "tiny",
                    "blocking_checks": True,
                    "thresholds": {"rouge_score": 1.01},
                }
            },
            name="failing.toml",
        )
        second = _materialize(failing, instance, ["evaluation_report", "promoted_model"])
        checks = {e.check_name: (e.passed, e.severity) for e in second.get_asset_check_evaluations()}
        assert checks["metric_thresholds"] == (False, dg.AssetCheckSeverity.ERROR)
        assert not second.asset_materializations_for_node("promoted_model")
        assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"
