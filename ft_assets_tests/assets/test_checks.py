"""The asset checks built on the release gates (see phases/test_gates.py), and promotion to an MLflow
registry alias: gated, and refused for a model whose inference the report did not score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ft_assets.asset_values import PromotionResult
from ft_assets.definitions import defs
from ft_assets.jobs import PIPELINE_ASSETS
from ft_assets_tests.helpers import pipeline_resources


def _materialize(config: Path, instance: dg.DagsterInstance, selection: list[str] | None = None) -> Any:
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        instance=instance,
        resources=pipeline_resources(config),
        selection=selection or PIPELINE_ASSETS,  # the sweep group needs a [sweep] and a partition
        raise_on_error=False,
    )


def _assert_evaluation_views(result: dg.ExecuteInProcessResult, client: MlflowClient) -> None:
    """The evaluation run states each metric's definition and intervals; the preview shows them too."""
    metadata = result.asset_materializations_for_node("evaluation_report")[0].metadata
    run = client.get_run(metadata["mlflow_run_id"].value)
    assert run.data.params["metric_rouge_score_library"].startswith("rouge-score")
    assert run.data.params["metric_bleu_score_variant"].startswith("sentence BLEU")
    for key in ("eval_rouge_score", "eval_base_rouge_score", "eval_delta_rouge_score"):
        assert (
            run.data.metrics[f"{key}_ci_low"] <= run.data.metrics[key] <= run.data.metrics[f"{key}_ci_high"]
        )
    assert "eval_corpus_bleu" in run.data.metrics and "eval_base_corpus_bleu" in run.data.metrics
    assert '"type": "table"' in run.data.tags["mlflow.loggedArtifacts"]
    preview = metadata["preview"].value
    assert "delta, paired [95% CI]" in preview and "**Sample rows** (first 5 of 60)" in preview
    assert "- `rouge_score`: library: rouge-score" in preview and "| corpus_bleu |" in preview
    # MLflow's GenAI evaluation view: one trace per row, the project's scores attached as assessments
    traces = client.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id, max_results=100)
    assert len(traces) == 60
    assessments = {a.name: a for a in traces[0].info.assessments}
    assert {"rouge_score", "rouge_score_base", "exact_match", "expected_response"} <= set(assessments)
    assert run.data.metrics["rouge_score/mean"] == pytest.approx(run.data.metrics["eval_rouge_score"])
    report = result.output_for_node("evaluation_report")
    assert (
        report.comparison["rouge_score"]["pairs"] + len(report.comparison["rouge_score"]["unpaired_ids"])
        == 60
    )


def test_promotion_follows_the_gates(write_config: Any, tmp_path: Path) -> None:
    passing = write_config(
        {
            "evaluator": {
                "register_model": True,
                "registered_model_name": "tiny",
                "blocking_checks": True,
                "thresholds": {"rouge_score": 0.0},
                "log_mlflow_evaluation": True,
            }
        },
        name="passing.toml",
    )
    with dg.instance_for_test() as instance:
        first = _materialize(passing, instance)
        assert first.success
        promoted = first.output_for_node("promoted_model")
        assert promoted == PromotionResult(registered=True, name="tiny", version="1", alias="champion")
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"
        _assert_evaluation_views(first, client)

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


def _run_job(job: str, config: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, resources=pipeline_resources(config), raise_on_error=False
    )


def _step_error(result: dg.ExecuteInProcessResult, step: str) -> str:
    failures = [
        event.step_failure_data.error
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_FAILURE and event.step_key == step
    ]
    assert failures, f"step {step} did not fail"
    error = failures[0]
    while error.cause is not None:
        error = error.cause
    return error.message


def test_promoting_a_model_whose_inference_was_not_evaluated_is_refused(
    write_config: Any, tmp_path: Path
) -> None:
    promote = {"register_model": True, "registered_model_name": "tiny", "blocking_checks": True}
    first_config = write_config({"evaluator": promote}, name="first.toml")
    with dg.instance_for_test() as instance:
        first = _materialize(first_config, instance)
        assert first.success
        evaluated_hash = first.output_for_node("inference_results").model_hash
        assert first.output_for_node("evaluation_report").model_hash == evaluated_hash

        # A different training config: a new model, then evaluation_job without inference_job.
        retrained = write_config(
            {"evaluator": promote, "fine_tuner": {"max_steps": 3}}, name="retrained.toml"
        )
        training = _run_job("finetuning_job", retrained, instance)
        assert training.success
        new_hash = training.output_for_node("fine_tuned_model").fingerprint
        assert new_hash != evaluated_hash

        evaluation = _run_job("evaluation_job", retrained, instance)
        assert not evaluation.success
        message = _step_error(evaluation, "promoted_model")
        assert f"refusing to register fine_tuned_model {new_hash}" in message
        assert f"scored the inference of model {evaluated_hash}" in message
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert [str(v.version) for v in client.search_model_versions("name='tiny'")] == ["1"]


def test_incomplete_inference_blocks_the_report_and_promotion(write_config: Any) -> None:
    # the tiny random model answers mostly nothing: no empty response allowed fails the completeness gate
    strict = {"inferencer": {"max_empty_response_share": 0.0}}
    blocking = write_config(
        {
            **strict,
            "evaluator": {"register_model": True, "registered_model_name": "tiny", "blocking_checks": True},
        },
        name="blocking.toml",
    )
    with dg.instance_for_test() as instance:
        result = _materialize(blocking, instance)
        checks = {e.check_name: (e.passed, e.severity) for e in result.get_asset_check_evaluations()}
        assert checks["inference_complete"] == (False, dg.AssetCheckSeverity.ERROR)
        assert result.output_for_node("inference_results").empty_responses > 0
        assert not result.asset_materializations_for_node("evaluation_report")
        assert not result.asset_materializations_for_node("promoted_model")

        # Checks that only warn let the report run; promotion still consults completeness itself.
        warning = write_config(
            {**strict, "evaluator": {"register_model": True, "registered_model_name": "tiny"}},
            name="warning.toml",
        )
        second = _materialize(warning, instance, ["evaluation_report", "promoted_model"])
        assert second.success
        assert second.output_for_node("promoted_model") == PromotionResult(
            registered=False,
            failed_gates=["inference_complete"],
        )
