"""A sweep candidate's evaluation with an LLM-judge primary metric, against the local OpenAI-compatible stub:
the candidate's leaderboard record is what its evaluation report says, and the judge scores each row once
(the record is read from the report, not scored again).

``sweep_evaluation_report`` runs for real (Dagster instance, MLflow sqlite store, ragas, the HTTP judge); its
upstream values (a trained model, two inference results) come through an IO manager, as Dagster loads the
inputs of an asset materialized on its own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ft_assets.asset_values import FineTunedModel, InferenceResults
from ft_assets.assets.common import PREFLIGHT_TAG
from ft_assets.config import load_settings
from ft_assets.jobs import PHASES
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import MlflowTracking
from ft_assets.sweeps.assets import META_RECORD, sweep_candidates, sweep_evaluation_report
from ft_assets.sweeps.candidates import plan_sweep
from ft_assets_tests.openai_stub import openai_stub  # noqa: F401  (pytest fixture)

#: (question, reference, fine-tuned answer, base answer): the stub's literal judge finds an answer accurate
#: when it equals the reference.
ROWS = [
    ("Столица Франции?", "Париж", "Париж", "Лион"),
    ("日本の首都は?", "東京", "大阪", "東京"),
    ("Capital of Peru?", "Lima", "Lima", "Cusco"),
    ("Ελληνική πρωτεύουσα;", "Αθήνα", "Αθήνα", "Αθήνα"),
    ("Capital of Kenya?", "Nairobi", "Mombasa", "Kisumu"),
]


class UpstreamValues(dg.IOManager):
    """Serves the given values as the asset's inputs; keeps nothing of its output."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        return None

    def load_input(self, context: dg.InputContext) -> Any:
        return self.values[context.asset_key.to_user_string()]


def _inference(path: Path, answer: int, model_hash: str) -> InferenceResults:
    rows = [
        {
            "id": f"q{index}",
            "system_prompt": None,
            "user_prompt": row[0],
            "assistant_response": row[answer],
            "ground_truth": row[1],
        }
        for index, row in enumerate(ROWS)
    ]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    counts = {"rows": len(rows), "expected_rows": len(rows), "empty_responses": 0}
    return InferenceResults(
        path=str(path), model_hash=model_hash, dataset_hash="test-set", metrics={}, **counts
    )


def _mentions(request: dict[str, Any], text: str) -> bool:
    """``text`` is in the request's messages, as it is or JSON-escaped (a prompt may embed its input as JSON)."""
    body = json.dumps(request, ensure_ascii=False)
    return text in body or json.dumps(json.dumps(text)[1:-1])[1:-1] in body


def test_candidate_record_is_the_reports_and_the_judge_scores_each_row_once(
    tmp_path: Path,
    write_config: Callable[..., Path],
    openai_stub: Callable[..., Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = openai_stub()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-sweep-judge")
    config = write_config(
        {
            "sweep": {"name": "judged", "grid": {"max_steps": [1, 2]}},
            "evaluator": {
                "metrics": ["answer_accuracy", "exact_match"],
                "primary_metric": "answer_accuracy",
                "judge": {"base_url": stub.base_url, "max_retries": 0, "timeout_s": 20},
            },
            "mlflow": {"log_system_metrics": False},
        }
    )
    candidate = plan_sweep(load_settings(config)).names[0]
    model = FineTunedModel(
        path=str(tmp_path / "model"),
        merged_path=None,
        base_model_id="embedded:tiny-llama",
        base_model_hash="base-fp",
        fingerprint="tuned-fp",
        data_versions={"train": "train-set", "validation": None},
        metrics={"steps": 1, "trained_tokens": 321, "duration_s": 2.5},
        mlflow_model_uri=None,
        base_quantization=None,
        evaluation_base="the base model as trained on",
        system_prompt={"override_text": None, "column": None},
    )
    values = {
        "sweep_fine_tuned_model": model,
        "sweep_inference_results": _inference(tmp_path / "tuned.jsonl", 2, "tuned-fp"),
        "base_inference_results": _inference(tmp_path / "base.jsonl", 3, "base-fp"),
    }
    upstream = [
        dg.AssetSpec("sweep_fine_tuned_model", partitions_def=sweep_candidates),
        dg.AssetSpec("sweep_inference_results", partitions_def=sweep_candidates),
        dg.AssetSpec("base_inference_results"),
    ]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sweep_candidates", [candidate])
        result = dg.materialize(
            [*upstream, sweep_evaluation_report],
            selection=[sweep_evaluation_report],
            partition_key=candidate,
            instance=instance,
            resources={
                "settings": PipelineSettings(config_path=str(config)),
                "mlflow": MlflowTracking(),
                "io_manager": dg.IOManagerDefinition.hardcoded_io_manager(UpstreamValues(values)),
            },
            tags={PREFLIGHT_TAG: ",".join(PHASES)},
        )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("sweep_evaluation_report")
    record = json.loads(Path(materialization.metadata[META_RECORD].value).read_text(encoding="utf-8"))
    report = json.loads(Path(record["evaluation"]["json_path"]).read_text(encoding="utf-8"))

    # the record is the report: per-row scores and ids, summary, paired delta vs base
    literal_judge = [float(row[2] == row[1]) for row in ROWS]
    assert report["per_row"]["fine_tuned"]["scores"]["answer_accuracy"] == literal_judge
    assert report["per_row"]["base"]["scores"]["answer_accuracy"] == [float(row[3] == row[1]) for row in ROWS]
    assert record["primary_metric"] == "answer_accuracy"
    assert record["ids"] == report["per_row"]["fine_tuned"]["ids"] == [f"q{i}" for i in range(len(ROWS))]
    assert record["scores"] == literal_judge
    summary = report["metrics"]["fine_tuned"]["answer_accuracy"]
    assert record["summary"] == {key: summary[key] for key in ("mean", "ci_low", "ci_high", "count")}
    assert record["vs_base"] == report["comparison"]["answer_accuracy"]
    assert record["cost"] == {"steps": 1, "trained_tokens": 321, "train_seconds": 2.5}

    # the judge saw what the report accounts for: each side's rows scored once, no second scoring
    usage = report["judge_usage"]
    assert usage["fine_tuned"]["requests"] > 0
    assert len(stub.stats.requests) == usage["total"]["requests"]
    assert usage["total"]["requests"] == usage["fine_tuned"]["requests"] + usage["base"]["requests"]
    per_question = Counter(
        question for request in stub.stats.requests for question, *_ in ROWS if _mentions(request, question)
    )
    assert set(per_question) == {row[0] for row in ROWS}
    # a row's question is in its fine-tuned and its base judge calls, as many for every row
    assert len(set(per_question.values())) == 1
    assert sum(per_question.values()) == len(stub.stats.requests)
