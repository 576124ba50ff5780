"""What the evaluation run gets in MLflow: metric names with intervals, definition params, and the
per-sample table, logged through PhaseRun into a real sqlite store and read back with mlflow.load_table."""

from __future__ import annotations

import json
import logging
import math

import pandas
import pytest

from ft_assets.phases.metrics import MetricScores
from ft_assets.phases.report_mlflow import (
    PER_SAMPLE_TABLE,
    definition_params,
    evaluation_metrics,
    per_sample_table,
)
from ft_assets.phases.reports import write_report
from ft_assets.tracking_keys import is_valid_key
from ft_assets.tracking_run import PhaseRun

NAN = math.nan


def _rows(ids: list[str], answers: list[str]) -> list[dict]:
    return [
        {"id": i, "user_prompt": f"Вопрос {i}?", "assistant_response": a, "ground_truth": f"Ответ {i}"}
        for i, a in zip(ids, answers, strict=True)
    ]


def _scores(values: list[float]) -> MetricScores:
    return MetricScores(per_row={"rouge_score": values}, errors={"rouge_score": [None] * len(values)})


@pytest.fixture
def report(tmp_path):
    rows = _rows(["a", "b", "c"], ["Ответ a", "x", "=1+1"])
    base_rows = _rows(["c", "b", "a"], ["c?", "b?", "a?"])
    paths = write_report(
        tmp_path / "report",
        rows=rows,
        scores=_scores([1.0, 0.2, NAN]),
        baseline_rows=base_rows,
        baseline_scores=_scores([0.0, 0.1, 0.5]),
        primary_metric="rouge_score",
        provenance={},
        durations_s={},
        definitions={"rouge_score": {"library": "rouge-score 0.1.2", "tokenizer": "Unicode words"}},
        corpus_scores={"fine_tuned": {"corpus_bleu": 0.3}, "base": {"corpus_bleu": 0.1}},
    )
    return rows, base_rows, paths.document


def test_metric_names_carry_intervals_deltas_and_corpus_scores(report) -> None:
    _, _, document = report
    metrics = evaluation_metrics(document)
    assert set(metrics) == {
        *(f"{p}_rouge_score{s}" for p in ("eval", "eval_base") for s in ("", "_ci_low", "_ci_high")),
        "eval_delta_rouge_score",
        "eval_delta_rouge_score_ci_low",
        "eval_delta_rouge_score_ci_high",
        "eval_pairs_rouge_score",
        "eval_corpus_bleu",
        "eval_base_corpus_bleu",
    }
    assert all(is_valid_key(key) for key in metrics)
    assert metrics["eval_rouge_score"] == pytest.approx(0.6)
    # pairs a (1.0 vs 0.5) and b (0.2 vs 0.1); c failed on the fine-tuned side
    assert metrics["eval_delta_rouge_score"] == pytest.approx(0.3) and metrics["eval_pairs_rouge_score"] == 2
    assert metrics["eval_delta_rouge_score_ci_low"] <= 0.3 <= metrics["eval_delta_rouge_score_ci_high"]
    params = definition_params(document)
    assert params["metric_rouge_score_library"] == "rouge-score 0.1.2"
    assert params["metric_rouge_score_tokenizer"] == "Unicode words"
    assert params["metric_intervals"].startswith("95% paired percentile bootstrap, 2000 resamples, seed 0")


def test_per_sample_table_round_trips_through_mlflow(report, tmp_path) -> None:
    from mlflow import MlflowClient

    rows, base_rows, _ = report
    scores, base_scores = _scores([1.0, 0.2, NAN]), _scores([0.0, 0.1, 0.5])
    table = per_sample_table(rows, scores, base_rows, base_scores)
    assert table["base_response"] == ["a?", "b?", "c?"] and table["base_rouge_score"] == [0.5, 0.1, 0.0]
    assert table["rouge_score"] == [1.0, 0.2, None]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tables", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    run = PhaseRun(
        "evaluation",
        logging.getLogger("test"),
        client=client,
        tracking_uri=uri,
        experiment_id=experiment,
        run_id=run_id,
    )
    run.log_table(table, PER_SAMPLE_TABLE)
    # MlflowClient.load_table searches through the global tracking URI (an MLflow 3.17 quirk): read the
    # artifact as the UI does, and the tag that makes the UI list it as a table
    loaded = pandas.read_json(
        client.download_artifacts(run_id, PER_SAMPLE_TABLE, str(tmp_path)), orient="split"
    )
    tag = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert tag == [{"path": PER_SAMPLE_TABLE, "type": "table"}]
    assert list(loaded["id"]) == ["a", "b", "c"]
    assert list(loaded["response"]) == ["Ответ a", "x", "=1+1"]
    assert list(loaded["prompt"]) == ["Вопрос a?", "Вопрос b?", "Вопрос c?"]
    assert list(loaded["base_response"]) == ["a?", "b?", "c?"]
    assert loaded["rouge_score"].tolist()[:2] == [1.0, 0.2] and math.isnan(loaded["rouge_score"].tolist()[2])
