"""The LLM judge: an OpenAI-compatible client, its concurrency bound, its token meter, and sampling.

Framework-free; openai and ragas are imported when a :class:`Judge` is built. Each row of a judge
metric is scored ``evaluator.judge.samples`` times: the row's score is the mean of the samples and
its spread their population standard deviation. A row scores only when every sample does (a failed
sample makes the row NaN with that sample's error), so a mean is always over ``samples`` verdicts.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ft_assets.config_sections import JudgeConfig
from ft_assets.secrets import redact

_ERROR_TEXT_LIMIT = 500

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


def describe_error(error: BaseException) -> str:
    """One line naming the exception, at most 500 characters, redacted (here, at the source: a judge error
    can echo the key or the endpoint's credentials, and it ends up in the report)."""
    text = redact(" ".join(f"{type(error).__name__}: {error}".split()))
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


@dataclass
class JudgeUsage:
    """What the LLM judge consumed: tokens as reported by the endpoint, HTTP requests sent, and cost."""

    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class JudgedRow:
    """One row of one judge metric: the mean of its samples, their spread, or why it failed."""

    mean: float
    std: float
    error: str | None = None


def judge_cost_usd(input_tokens: int, output_tokens: int, judge: JudgeConfig) -> float:
    """US dollars for this many tokens at the judge's prices, which are per *million* tokens."""
    return (
        input_tokens / 1_000_000 * judge.input_price_per_million_tokens
        + output_tokens / 1_000_000 * judge.output_price_per_million_tokens
    )


@functools.cache
def _recording_llm_class() -> type:
    from ragas.llms.base import InstructorBaseRagasLLM

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
                _note(describe_error(error))
                raise

    return RecordingLLM


class Judge:
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
        self.llm = _recording_llm_class()(llm_factory(config.model, client=self.client, max_retries=1))

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
        self, metric: Any, inputs: Sequence[dict[str, Any] | str], *, empty_response_scores_zero: bool
    ) -> list[JudgedRow]:
        """Score every row of one metric ``samples`` times, at most ``max_concurrency`` requests'
        worth of judge calls at a time. A string in ``inputs`` is why that row cannot be scored."""
        rows = (self._score_row(metric, kwargs, empty_response_scores_zero) for kwargs in inputs)
        return list(await asyncio.gather(*rows))

    async def _score_row(
        self, metric: Any, kwargs: dict[str, Any] | str, empty_response_scores_zero: bool
    ) -> JudgedRow:
        if isinstance(kwargs, str):
            return JudgedRow(math.nan, math.nan, kwargs)
        if empty_response_scores_zero and not kwargs["response"].strip():
            return JudgedRow(0.0, 0.0)
        samples = self.config.samples
        results = await asyncio.gather(*(self._sample(metric, kwargs) for _ in range(samples)))
        for index, (_, error) in enumerate(results):
            if error is not None:
                prefix = f"sample {index + 1} of {samples}: " if samples > 1 else ""
                return JudgedRow(math.nan, math.nan, prefix + error)
        values = [value for value, _ in results]
        return JudgedRow(statistics.fmean(values), statistics.pstdev(values))

    async def _sample(self, metric: Any, kwargs: dict[str, Any]) -> tuple[float, str | None]:
        notes: list[str] = []
        _JUDGE_NOTES.set(notes)
        async with self.semaphore:
            try:
                result = await asyncio.wait_for(metric.ascore(**kwargs), self.config.timeout_s)
            except TimeoutError:
                error_text = f"timed out after {self.config.timeout_s:g} s (evaluator.judge.timeout_s)"
                return math.nan, "; ".join([error_text, *notes])
            except Exception as error:
                error_text = describe_error(error)
                return math.nan, "; ".join([error_text, *(note for note in notes if note != error_text)])
        value = float(result.value)
        if math.isnan(value):
            return value, "; ".join(notes) or "the judge gave no usable verdict"
        return value, None

    async def close(self) -> None:
        await self.client.close()
