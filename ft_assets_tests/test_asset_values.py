"""The asset values survive the Pipes wire (JSON, as ``dagster_pipes`` writes it: NaN and infinity
included) and the sweep's candidate record; JSON that is not the value it claims to be is refused by name."""

import json
import math
import pickle

import pytest

from ft_assets.asset_values import (
    AssetValueError,
    EvaluationReport,
    FineTunedModel,
    InferenceCounts,
    InferenceResults,
    PromotionResult,
)

NAN, INF = float("nan"), float("inf")


def _wire(data: dict) -> dict:
    # what dagster_pipes does with a custom message: json.dumps on one side, json.loads on the other
    return json.loads(json.dumps(data))


def _model() -> FineTunedModel:
    return FineTunedModel(
        path="/данные/模型/adapter",
        merged_path=None,
        base_model_id="embedded:tiny-llama",
        base_model_hash="sha256:base",
        fingerprint="sha256:fp",
        data_versions={"train": "sha256:train", "validation": None},
        metrics={"train_loss": 1.25, "eval_loss": NAN, "tokens_per_s": INF, "steps": 4},
        mlflow_model_uri="models:/m-1",
        base_quantization="nf4-4bit",
        evaluation_base="the unquantized base",
        system_prompt={"override_text": "Отвечай кратко. 简短回答。", "column": None},
    )


def _report() -> EvaluationReport:
    return EvaluationReport(
        json_path="/отчёт/evaluation_summary.json",
        xlsx_path="/отчёт/evaluation_report.xlsx",
        summary={"rouge_score": {"mean": 0.5, "ci_low": NAN, "ci_high": -INF, "count": 1, "nan_count": 2}},
        base_summary={},
        comparison=None,
        failed_rows={"rouge_score": ["q-1", "q-2"]},
        primary_metric="rouge_score",
        rows=3,
        model_hash="sha256:fp",
        inference=InferenceCounts(rows=3, expected_rows=3, empty_responses=1),
        row_scores_path="/отчёт/row_scores.json",
    )


def test_a_fine_tuned_model_round_trips_with_nan_infinity_and_non_ascii() -> None:
    model = _model()
    back = FineTunedModel.from_json(_wire(model.to_json()))
    assert back.path == "/данные/模型/adapter" and back.system_prompt == model.system_prompt
    assert math.isnan(back.metrics["eval_loss"]) and back.metrics["tokens_per_s"] == INF
    assert isinstance(back.metrics["steps"], int)
    finite = {k: v for k, v in model.metrics.items() if k != "eval_loss"}
    assert {k: v for k, v in back.metrics.items() if k != "eval_loss"} == finite
    # everything but the NaN compares equal (NaN != NaN), and the JSON is the same text
    assert json.dumps(back.to_json()) == json.dumps(model.to_json())
    assert str(back.model_dir) == model.path
    merged = FineTunedModel.from_json({**model.to_json(), "merged_path": "/merged/модель"})
    assert str(merged.model_dir) == "/merged/модель"


def test_an_evaluation_report_rebuilds_its_nested_counts() -> None:
    report = _report()
    back = EvaluationReport.from_json(_wire(report.to_json()))
    assert back.inference == InferenceCounts(3, 3, 1) and isinstance(back.inference, InferenceCounts)
    assert back.failed_rows == report.failed_rows and back.comparison is None
    assert (
        math.isnan(back.summary["rouge_score"]["ci_low"]) and back.summary["rouge_score"]["ci_high"] == -INF
    )
    assert json.dumps(back.to_json()) == json.dumps(report.to_json())


@pytest.mark.parametrize(
    "value",
    [
        InferenceResults(
            path="/выход/推理.jsonl",
            rows=60,
            expected_rows=60,
            empty_responses=2,
            model_hash="sha256:fp",
            dataset_hash="sha256:test",
            metrics={"rows_per_s": 12.5, "generated_tokens_per_s": 0.0},
        ),
        PromotionResult(registered=True, name="tiny", version="1", alias="champion"),
        PromotionResult(registered=False, failed_gates=["inference_complete"]),
    ],
)
def test_values_without_nan_round_trip_equal(value: InferenceResults | PromotionResult) -> None:
    assert type(value).from_json(_wire(value.to_json())) == value
    assert pickle.loads(pickle.dumps(value)) == value  # what Dagster's IO manager stores


def test_inference_counts_are_what_the_report_records() -> None:
    results = InferenceResults("/a.jsonl", 5, 6, 1, "sha256:m", "sha256:d", {})
    assert results.counts() == InferenceCounts(rows=5, expected_rows=6, empty_responses=1)


def test_json_that_is_not_the_value_is_refused_by_name() -> None:
    data = _model().to_json()
    del data["fingerprint"]
    with pytest.raises(AssetValueError, match=r"FineTunedModel: missing key\(s\) fingerprint"):
        FineTunedModel.from_json(data)
    with pytest.raises(AssetValueError, match=r"PromotionResult: unknown key\(s\) colour"):
        PromotionResult.from_json({"registered": True, "colour": "blue"})
    with pytest.raises(AssetValueError, match="InferenceResults: expected a JSON object, got list"):
        InferenceResults.from_json([1, 2])
    report = _report().to_json()
    report["inference"] = {"rows": 3}
    with pytest.raises(
        AssetValueError, match=r"InferenceCounts: missing key\(s\) empty_responses, expected_rows"
    ):
        EvaluationReport.from_json(report)


def test_values_are_frozen() -> None:
    with pytest.raises(AttributeError):
        _model().path = "/elsewhere"  # type: ignore[misc]


def test_the_cli_prints_where_typed_values_are_and_their_json() -> None:
    from ft_assets.cli import as_json, summary

    report = _report()
    asset = {"mlflow_run_url": None, "mlflow_run_id": None}
    results = {
        "dagster_run_id": None,
        "phases": {
            "finetuning": {
                "status": "completed",
                "assets": {"fine_tuned_model": {**asset, "value": _model()}},
                "checks": {},
            },
            "evaluation": {
                "status": "completed",
                "assets": {"evaluation_report": {**asset, "value": report}},
                "checks": {},
            },
        },
    }
    assert summary(results) == [
        "finetuning: completed: fine_tuned_model -> /данные/模型/adapter",
        "evaluation: completed: evaluation_report -> /отчёт/evaluation_summary.json",
    ]
    printed = json.loads(json.dumps(results, default=as_json))  # what ft-pipeline --json prints
    assert printed["phases"]["evaluation"]["assets"]["evaluation_report"]["value"]["inference"] == {
        "rows": 3,
        "expected_rows": 3,
        "empty_responses": 1,
    }
