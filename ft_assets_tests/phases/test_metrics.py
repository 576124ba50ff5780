"""Metrics: offline scores cross-checked against the reference libraries, LLM judges against a local
OpenAI-compatible server (concurrency bound, failing rows, token usage and cost), preflight errors."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import statistics

import pytest
import sacrebleu
from rapidfuzz.distance import Levenshtein
from rouge_score import rouge_scorer

from ft_assets.config import EvaluatorConfig
from ft_assets.config_sections import JUDGE_METRICS, OFFLINE_METRICS, JudgeConfig
from ft_assets.phases.metrics import (
    EMBEDDING_METRICS,
    MetricScores,
    MetricsError,
    judge_cost_usd,
    preflight,
    score_rows,
    summarize,
)
from ft_assets_tests.openai_stub import openai_stub  # noqa: F401  (pytest fixture)

#: The offline metrics that need no embedding model, in their configured order.
OFFLINE_TEXT_METRICS = [name for name in OFFLINE_METRICS if name not in EMBEDDING_METRICS]
PAIRS = [
    ("The capital of France is Paris.", "Paris is the capital of France."),
    ("The cat sat on the mat. The dog ran in the park.", "The dog ran in the park. The cat sat on the mat."),
    ("Water boils at 100 degrees Celsius at sea level.", "Water boils at 100 degrees Celsius at sea level."),
    ("Running runners ran quickly.", "The answer is: Running runners ran quickly. Anything else?"),
    ("Completely different reference text.", ""),
]
API_KEY = "sk-test-not-a-real-key-4242"


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's real key must neither leak into nor change these tests (conftest sets offline mode)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def _rows(pairs: list[tuple[str, str]], **extra: object) -> list[dict]:
    return [
        {
            "id": f"row-{index}",
            "system_prompt": None,
            "user_prompt": f"Question {index}?",
            "assistant_response": response,
            "ground_truth": reference,
            "prompt_tokens": 5,
            "completion_tokens": 7,
            "finish_reason": "eos",
            **extra,
        }
        for index, (reference, response) in enumerate(pairs)
    ]


def _config(metrics: list[str], **judge: object) -> EvaluatorConfig:
    return EvaluatorConfig(metrics=metrics, primary_metric=metrics[0], judge=JudgeConfig(**judge))


def test_offline_metrics_match_sacrebleu_rouge_and_rapidfuzz() -> None:
    scores = score_rows(_rows(PAIRS), _config(OFFLINE_TEXT_METRICS))

    # English ASCII text: the Unicode tokenizer gives rouge_score's own tokens, and auto stems.
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = {
        # Sentence BLEU with effective order (corpus BLEU of one segment scored short answers 0).
        "bleu_score": [sacrebleu.sentence_bleu(hyp, [ref]).score / 100 for ref, hyp in PAIRS],
        # ragas scores an empty response 0 rather than asking sacrebleu.
        "chrf_score": [sacrebleu.sentence_chrf(hyp, [ref]).score / 100 if hyp else 0.0 for ref, hyp in PAIRS],
        "rouge_score": [rouge.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in PAIRS],
        "exact_match": [float(ref == hyp) for ref, hyp in PAIRS],
        "string_presence": [float(ref in hyp) for ref, hyp in PAIRS],
        "non_llm_string_similarity": [1 - Levenshtein.normalized_distance(ref, hyp) for ref, hyp in PAIRS],
    }
    assert list(scores.per_row) == OFFLINE_TEXT_METRICS
    for name, values in expected.items():
        assert scores.per_row[name] == pytest.approx(values, abs=1e-9), name
        assert scores.errors[name] == [None] * len(PAIRS), name
        assert scores.durations_s[name] >= 0
    # The sentence-swapped pair is not a perfect BLEU match (ragas' own BleuScore says 1.0 there).
    assert scores.per_row["bleu_score"][1] < 0.9
    assert scores.per_row["bleu_score"][2] == pytest.approx(1.0)
    assert scores.judge_usage.requests == 0 and scores.judge_usage.cost_usd == 0


def test_offline_metrics_never_build_an_openai_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an offline metric built an OpenAI client")

    monkeypatch.setattr(openai, "AsyncOpenAI", refuse)
    monkeypatch.setattr(openai, "OpenAI", refuse)
    scores = score_rows(_rows(PAIRS[:2]), _config(OFFLINE_TEXT_METRICS), api_key=None)
    assert all(error is None for errors in scores.errors.values() for error in errors)


def test_row_without_ground_truth_is_nan_with_its_id_and_the_rest_score() -> None:
    rows = _rows(PAIRS[:3])
    rows[1]["ground_truth"] = None
    scores = score_rows(rows, _config(["exact_match", "rouge_score"]))
    assert math.isnan(scores.per_row["exact_match"][1])
    assert scores.errors["exact_match"][1] == "row 'row-1' has no ground_truth"
    assert scores.per_row["exact_match"][2] == 1.0
    assert scores.errors["rouge_score"][0] is None and scores.per_row["rouge_score"][0] > 0


def test_score_rows_works_inside_a_running_event_loop() -> None:
    rows = _rows(PAIRS)
    config = _config(["bleu_score", "rouge_score"])
    plain = score_rows(rows, config)

    async def from_async_code() -> MetricScores:
        return score_rows(rows, config)

    assert asyncio.run(from_async_code()).per_row == plain.per_row


def test_semantic_similarity_uses_the_bundled_embedding_model_offline() -> None:
    pairs = [
        ("The cat is sitting on the mat.", "The cat is sitting on the mat."),
        ("The cat is sitting on the mat.", "A cat sits on a rug."),
        ("The cat is sitting on the mat.", "Quarterly revenue rose by eight percent."),
    ]
    scores = score_rows(_rows(pairs), _config(["semantic_similarity"]))
    same, paraphrase, unrelated = scores.per_row["semantic_similarity"]
    assert same == pytest.approx(1.0, abs=1e-5)
    assert paraphrase > 0.5 > 0.2 > unrelated
    assert scores.errors["semantic_similarity"] == [None, None, None]


def test_summarize_ignores_nan_and_counts_it() -> None:
    scores = MetricScores(
        per_row={"a": [0.5, math.nan, 1.0, 0.0], "b": [math.nan, math.nan]},
        errors={"a": [None, "boom", None, None], "b": ["x", "y"]},
    )
    summary = summarize(scores)
    assert summary["a"] == pytest.approx(
        {
            "mean": 0.5,
            "median": 0.5,
            "std": statistics.pstdev([0.5, 1.0, 0.0]),
            "min": 0.0,
            "max": 1.0,
            "count": 3,
            "nan_count": 1,
        }
    )
    assert summary["b"]["count"] == 0 and summary["b"]["nan_count"] == 2
    assert all(math.isnan(summary["b"][key]) for key in ("mean", "median", "std", "min", "max"))


def test_preflight_names_the_metric_and_the_key_for_each_problem() -> None:
    with pytest.raises(MetricsError) as missing_key:
        preflight(
            _config(["bleu_score", "answer_accuracy", "faithfulness"]),
            api_key=None,
            has_ground_truth=True,
            has_contexts=True,
        )
    message = str(missing_key.value)
    assert "'answer_accuracy'" in message and "'faithfulness'" in message and "'bleu_score'" not in message
    assert "OPENAI_API_KEY" in message and "--openai-key" in message

    with pytest.raises(MetricsError, match=r"\['rouge_score', 'factual_correctness'\].*ground_truth"):
        preflight(
            _config(["rouge_score", "factual_correctness", "answer_relevancy"]),
            api_key="k",
            has_ground_truth=False,
            has_contexts=False,
        )
    with pytest.raises(MetricsError, match=r"\['faithfulness'\].*'contexts'"):
        preflight(_config(["faithfulness"]), api_key="k", has_ground_truth=True, has_contexts=False)
    with pytest.raises(
        MetricsError, match=r"semantic_similarity.*evaluator.embedding_model = '/nowhere/model'"
    ):
        preflight(
            EvaluatorConfig(
                metrics=["semantic_similarity"],
                primary_metric="semantic_similarity",
                embedding_model="/nowhere/model",
            ),
            api_key=None,
            has_ground_truth=True,
            has_contexts=False,
        )
    with pytest.raises(MetricsError, match="no rows to score"):
        score_rows([], _config(OFFLINE_TEXT_METRICS))
    # Offline metrics with a ground truth need nothing else.
    preflight(_config(OFFLINE_TEXT_METRICS), api_key=None, has_ground_truth=True, has_contexts=False)


def test_judge_metric_without_key_fails_before_any_request(openai_stub, monkeypatch) -> None:  # noqa: F811
    stub = openai_stub()
    with pytest.raises(MetricsError, match=r"'answer_accuracy'.*OPENAI_API_KEY"):
        score_rows(_rows(PAIRS[:2]), _config(["answer_accuracy"], base_url=stub.base_url))
    assert stub.stats.requests == []
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # the environment variable is enough
    assert score_rows(_rows(PAIRS[2:3]), _config(["answer_accuracy"], base_url=stub.base_url)).per_row == {
        "answer_accuracy": [1.0]
    }


def _judge_rows() -> list[dict]:
    facts = [
        ("Paris is the capital of France.", "Paris is the capital of France."),  # exact
        ("Paris is the capital of France. It is large.", "Paris is the capital of France."),  # half
        ("Berlin is in Germany.", "Madrid is in Spain."),  # wrong
    ]
    rows = _rows(facts, contexts=["Paris is the capital of France.", "Berlin is in Germany."])
    rows[0]["user_prompt"] = (
        "Paris is the capital of France."  # the stub's "generated question" is the response
    )
    return rows


def test_all_judge_metrics_score_with_literal_judge_in_json_mode(openai_stub, caplog) -> None:  # noqa: F811
    caplog.set_level(logging.DEBUG)
    stub = openai_stub()
    config = _config(
        list(JUDGE_METRICS), base_url=stub.base_url, model="judge-model", max_retries=0, timeout_s=10
    )
    scores = score_rows(_judge_rows(), config, api_key=API_KEY)

    per_row = scores.per_row
    assert all(error is None for errors in scores.errors.values() for error in errors), scores.errors
    # The stub judges literally: a claim holds when it occurs in the other text.
    assert per_row["answer_accuracy"] == [1.0, 0.0, 0.0]
    assert per_row["factual_correctness"] == pytest.approx([1.0, 0.67, 0.0])
    assert per_row["faithfulness"] == [1.0, 1.0, 0.0]
    assert per_row["answer_correctness"][0] == pytest.approx(1.0, abs=1e-5)
    assert (
        per_row["answer_correctness"][0] > per_row["answer_correctness"][1] > per_row["answer_correctness"][2]
    )
    assert per_row["answer_relevancy"][0] == pytest.approx(1.0, abs=1e-5)
    assert all(value < 0.9 for value in per_row["answer_relevancy"][1:])

    assert stub.stats.requests, "the judge was never called"
    for request, headers in zip(stub.stats.requests, stub.stats.headers, strict=True):
        assert request["model"] == "judge-model"
        assert request["response_format"] == {"type": "json_object"}
        assert headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in caplog.text and API_KEY not in repr(scores)


def test_concurrency_is_bounded_and_used(openai_stub) -> None:  # noqa: F811
    rows = _rows([(f"Fact {i} is true.", f"Fact {i} is true.") for i in range(6)])
    stub = openai_stub(delay_s=0.3)
    scores = score_rows(
        rows, _config(["answer_accuracy"], base_url=stub.base_url, max_concurrency=3), api_key="k"
    )
    assert scores.per_row["answer_accuracy"] == [1.0] * 6
    assert stub.stats.max_in_flight == 3

    serial = openai_stub(delay_s=0.05)
    score_rows(
        rows[:3], _config(["answer_accuracy"], base_url=serial.base_url, max_concurrency=1), api_key="k"
    )
    assert serial.stats.max_in_flight == 1


def test_failing_rows_are_nan_with_their_error_and_the_rest_complete(openai_stub) -> None:  # noqa: F811
    markers = {
        "MARK-500": "http500",
        "MARK-GARBAGE": "garbage",
        "MARK-BADJSON": "bad_json",
        "MARK-HANG": "hang",
    }
    pairs = [("The sky is blue.", "The sky is blue.")] + [
        (f"{marker} answer.", "Something else.") for marker in markers
    ]
    pairs.append(("Grass is green.", "Grass is green."))
    pairs.append(("MARK-TRICKLE answer.", "Slow answer."))
    stub = openai_stub(failures={**markers, "MARK-TRICKLE": "trickle"}, trickle_interval_s=0.05)
    config = _config(
        ["answer_accuracy", "factual_correctness"],
        base_url=stub.base_url,
        max_retries=0,
        timeout_s=1.0,
        max_concurrency=8,
        input_price_per_million_tokens=0.15,
        output_price_per_million_tokens=0.60,
    )
    scores = score_rows(_rows(pairs), config, api_key=API_KEY)

    for name in ("answer_accuracy", "factual_correctness"):
        values, errors = scores.per_row[name], scores.errors[name]
        assert (values[0], values[5]) == (1.0, 1.0), name
        assert errors[0] is None and errors[5] is None
        assert all(math.isnan(value) for value in values[1:5] + values[6:]), (name, values)
        assert "500" in errors[1], errors[1]
        assert "not JSON" in errors[2] and "<html>" in errors[2], errors[2]
        assert "Invalid JSON" in errors[3], errors[3]
        assert "timed out" in errors[4].lower(), errors[4]
        # A body that keeps trickling never trips the per-read timeout; the row deadline stops it.
        assert "timed out after 1 s (evaluator.judge.timeout_s)" in errors[6], errors[6]
        assert all(API_KEY not in error for error in errors if error)

    usage = scores.judge_usage
    assert usage.input_tokens == stub.stats.prompt_tokens > 0
    assert usage.output_tokens == stub.stats.completion_tokens > 0
    assert usage.requests == len(stub.stats.requests)
    expected_cost = stub.stats.prompt_tokens * 0.15 / 1e6 + stub.stats.completion_tokens * 0.60 / 1e6
    assert usage.cost_usd == pytest.approx(expected_cost, rel=1e-12)
    assert judge_cost_usd(1_000_000, 1_000_000, config.judge) == pytest.approx(0.75)


def test_http_failures_are_retried_max_retries_times(openai_stub) -> None:  # noqa: F811
    stub = openai_stub(failures={"MARK-500": "http500"})
    rows = _rows([("MARK-500 answer.", "Anything.")])
    config = _config(["factual_correctness"], base_url=stub.base_url, max_retries=1, timeout_s=10)
    scores = score_rows(rows, config, api_key="k")
    assert math.isnan(scores.per_row["factual_correctness"][0])
    # factual_correctness first decomposes the response (no marker), then verifies against the
    # reference (marker): that call fails and is retried once.
    assert stub.stats.statuses == {200: 1, 500: 2}
    assert scores.judge_usage.requests == 3


def test_stub_answers_in_the_form_the_request_asks_for(openai_stub) -> None:  # noqa: F811
    import openai

    stub = openai_stub()
    client = openai.OpenAI(base_url=stub.base_url, api_key="k", max_retries=0)
    prompt = (
        'Rate it.\n-----\ninput: {"query": "q", "user_answer": "Yes.", "reference_answer": "yes"}\nOutput: '
    )
    schema = {
        "title": "AnswerAccuracyOutput",
        "type": "object",
        "properties": {"rating": {"type": "integer"}},
    }
    messages = [{"role": "user", "content": prompt}]

    tool = client.chat.completions.create(
        model="m",
        messages=messages,
        tools=[{"type": "function", "function": {"name": "AnswerAccuracyOutput", "parameters": schema}}],
    )
    assert json.loads(tool.choices[0].message.tool_calls[0].function.arguments) == {"rating": 4}
    structured = client.chat.completions.create(
        model="m",
        messages=messages,
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
    )
    assert json.loads(structured.choices[0].message.content) == {"rating": 4}
    assert structured.usage.prompt_tokens == len(prompt.split())
    system = {
        "role": "system",
        "content": f"match the following json_schema:\n{json.dumps(schema)}\nMake sure",
    }
    plain = client.chat.completions.create(model="m", messages=[system, *messages])
    assert plain.choices[0].message.content.startswith("Sure!")  # no JSON mode: prose around the JSON
    assert stub.stats.statuses == {200: 3}


def test_empty_response_scores_zero_without_asking_the_judge(openai_stub) -> None:  # noqa: F811
    stub = openai_stub()
    rows = _rows([("Paris is the capital of France.", "   "), ("Paris is the capital of France.", "")])
    rows[1]["ground_truth"] = ""  # an empty reference is no reference
    metrics = ["answer_accuracy", "factual_correctness", "answer_relevancy"]
    scores = score_rows(rows, _config(metrics, base_url=stub.base_url), api_key="k")
    for name in metrics:
        assert scores.per_row[name][0] == 0.0 and scores.errors[name][0] is None, name
    for name in ("answer_accuracy", "factual_correctness"):
        assert (
            math.isnan(scores.per_row[name][1])
            and scores.errors[name][1] == "row 'row-1' has no ground_truth"
        )
    assert stub.stats.requests == []
