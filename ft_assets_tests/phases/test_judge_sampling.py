"""LLM-judge variance: ``[evaluator.judge] samples = k`` asks the judge k times per row, against the
local OpenAI-compatible server answering differently from one sample to the next."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import numpy as np
import pytest

from ft_assets.config import EvaluatorConfig
from ft_assets.config_sections import JudgeConfig
from ft_assets.phases.metric_definitions import describe_metrics, judge_prompt_version
from ft_assets.phases.metrics import score_rows
from ft_assets_tests.openai_stub import _last_json_after, openai_stub  # noqa: F401  (pytest fixture)


class ChangingJudge:
    """Answer accuracy ratings that change with every request about the same row, from a fixed list
    per row; records what it served so the expected scores are computed from the wire."""

    def __init__(self, ratings: dict[str, list[int | None]]) -> None:
        self.ratings = ratings
        self.served: dict[str, list[int]] = {row: [] for row in ratings}
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> str:
        data = _last_json_after(str(request["messages"][-1]["content"]), "\ninput:")
        # The second ragas judge swaps the answers: the row is whichever text is a key.
        row = next(text for text in (data["user_answer"], data["reference_answer"]) if text in self.ratings)
        with self._lock:
            planned = self.ratings[row][len(self.served[row])]
            if planned is None:
                self.served[row].append(-1)
                raise ValueError("the stub judge refuses this request")  # answered as HTTP 400
            self.served[row].append(planned)
        return json.dumps({"rating": planned})


def _rows(answers: list[str]) -> list[dict]:
    return [
        {"id": f"row-{i}", "user_prompt": f"Question {i}?", "assistant_response": a, "ground_truth": a}
        for i, a in enumerate(answers)
    ]


def _config(base_url: str, samples: int) -> EvaluatorConfig:
    judge = JudgeConfig(base_url=base_url, samples=samples, max_concurrency=1, max_retries=0, model="judge-x")
    return EvaluatorConfig(metrics=["answer_accuracy"], primary_metric="answer_accuracy", judge=judge)


def test_each_row_is_judged_k_times_and_reports_mean_and_spread(openai_stub) -> None:  # noqa: F811
    # Each sample of answer accuracy is two judge calls (ragas' two judges), so two ratings per sample.
    judge = ChangingJudge({"Paris.": [4, 4, 2, 2, 0, 4], "Москва.": [4, 4, 4, 4, 4, 4]})
    stub = openai_stub(responder=judge)
    scores = score_rows(_rows(["Paris.", "Москва."]), _config(stub.base_url, 3), api_key="k")

    assert scores.errors["answer_accuracy"] == [None, None]
    assert len(stub.stats.requests) == 12 and scores.judge_samples == 3
    means, stds = [], []
    for row in ("Paris.", "Москва."):
        served = np.array(judge.served[row], dtype=float).reshape(3, 2) / 4  # samples x judges
        per_sample = served.mean(axis=1)
        means.append(per_sample.mean())
        stds.append(per_sample.std())  # numpy's default: population std
    assert scores.per_row["answer_accuracy"] == pytest.approx(means, abs=1e-12)
    assert scores.per_row_std["answer_accuracy"] == pytest.approx(stds, abs=1e-12)
    assert means[0] == pytest.approx(2 / 3) and stds[0] > 0.2 and stds[1] == 0.0
    assert scores.sample_std["answer_accuracy"] == pytest.approx(np.mean(stds), abs=1e-12)


def test_a_failed_sample_fails_the_row_and_says_which(openai_stub) -> None:  # noqa: F811
    # Both judges of the second sample fail (ragas keeps one judge when only the other fails).
    judge = ChangingJudge({"Paris.": [4, 4, None, None], "Rome.": [2, 2, 2, 2]})
    stub = openai_stub(responder=judge)
    scores = score_rows(_rows(["Paris.", "Rome."]), _config(stub.base_url, 2), api_key="k")

    values, errors = scores.per_row["answer_accuracy"], scores.errors["answer_accuracy"]
    assert math.isnan(values[0]) and math.isnan(scores.per_row_std["answer_accuracy"][0])
    assert errors[0].startswith("sample 2 of 2: ") and "refuses this request" in errors[0], errors[0]
    assert (values[1], errors[1], scores.per_row_std["answer_accuracy"][1]) == (0.5, None, 0.0)
    assert scores.sample_std["answer_accuracy"] == 0.0  # over the rows that scored


def test_one_sample_by_default_with_zero_spread(openai_stub) -> None:  # noqa: F811
    stub = openai_stub()
    config = EvaluatorConfig(
        metrics=["answer_accuracy", "exact_match"],
        primary_metric="exact_match",
        judge=JudgeConfig(base_url=stub.base_url),
    )
    scores = score_rows(_rows(["Paris."]), config, api_key="k")
    assert config.judge.samples == 1 and scores.judge_samples == 1
    assert len(stub.stats.requests) == 2
    assert scores.per_row_std == {"answer_accuracy": [0.0]} and scores.sample_std == {"answer_accuracy": 0.0}


def test_definitions_record_the_judge_model_prompt_version_and_samples(tmp_path) -> None:
    config = _config("http://127.0.0.1:9/v1", 5)
    described = describe_metrics(config)["answer_accuracy"]
    assert described["judge_model"] == "judge-x" and described["samples"] == "5"
    assert "judge-x at http://127.0.0.1:9/v1" in described["variant"]
    assert "mean of 5 judge sample(s)" in described["aggregation"]
    version = described["prompt_version"]
    assert (
        version.startswith("ragas 0.4.3 AnswerAccuracy, prompts sha256:")
        and len(version.split(":")[-1]) == 12
    )
    # A different metric's prompts hash differently; the same one is stable.
    assert judge_prompt_version("faithfulness") != version == judge_prompt_version("answer_accuracy")
