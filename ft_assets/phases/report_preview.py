"""The markdown preview of an evaluation report (the Dagster UI shows it next to the materialization):
the score table with intervals, each metric's definition, the corpus scores, and a few sample rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ft_assets.phases.formatting import estimate_text, number_text

#: Sample rows shown in the preview, and the characters kept of each of their texts.
SAMPLE_ROWS = 5
_SAMPLE_TEXT_LIMIT = 160
#: Decimals of the scores in the preview.
_DIGITS = 4


def _fmt(value: Any) -> str:
    return number_text(value, digits=_DIGITS)


def _with_interval(mean: Any, low: Any, high: Any, *, signed: bool = False) -> str:
    return estimate_text(mean, low, high, digits=_DIGITS, signed=signed)


def table_text(value: Any, limit: int = _SAMPLE_TEXT_LIMIT) -> str:
    """``value`` safe inside a markdown table cell: one line, ``|`` and HTML escaped, at most ``limit``
    characters."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _score_table(document: Mapping[str, Any]) -> list[str]:
    metrics = document["metrics"]
    fine_tuned, base = metrics["fine_tuned"], metrics["base"]
    comparison = document["comparison"] or {}
    primary = document["primary_metric"]
    confidence = f"{document['bootstrap']['confidence']:.0%} CI"
    lines = [
        f"| metric | fine-tuned mean [{confidence}] | base mean [{confidence}] | delta, paired [{confidence}] "
        "| pairs | scored rows | failed rows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [primary, *(name for name in fine_tuned if name != primary)]:
        stats = fine_tuned[name]
        base_stats = (base or {}).get(name, {})
        paired = comparison.get(name, {})
        label = f"**{name}** (primary)" if name == primary else name
        cells = [
            label,
            _with_interval(stats["mean"], stats["ci_low"], stats["ci_high"]),
            _with_interval(base_stats.get("mean"), base_stats.get("ci_low"), base_stats.get("ci_high")),
            _with_interval(
                paired.get("delta"), paired.get("delta_ci_low"), paired.get("delta_ci_high"), signed=True
            ),
            str(paired.get("pairs", "n/a")),
            str(stats["count"]),
            str(stats["nan_count"]),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def _definitions(document: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, definition in document["definitions"].items():
        if definition:
            described = "; ".join(f"{key}: {table_text(value)}" for key, value in definition.items())
            lines.append(f"- `{name}`: {described}")
    return ["", "**Metric definitions**", "", *lines] if lines else []


def _spread(document: Mapping[str, Any]) -> list[str]:
    spread = document["judge_spread"]
    if spread["samples"] <= 1 or not spread["fine_tuned"]:
        return []
    parts = ", ".join(f"{name} {_fmt(value)}" for name, value in spread["fine_tuned"].items())
    return ["", f"Judge spread over {spread['samples']} samples per row (mean per-row std): {parts}"]


def _corpus(document: Mapping[str, Any]) -> list[str]:
    corpus = document["corpus_scores"]
    names = sorted({key for side in corpus.values() if side for key in side})
    if not names:
        return []
    tuned, base = corpus.get("fine_tuned") or {}, corpus.get("base") or {}
    lines = ["", "| corpus score | fine-tuned | base |", "|---|---:|---:|"]
    lines += [f"| {name} | {_fmt(tuned.get(name))} | {_fmt(base.get(name))} |" for name in names]
    return lines


def _samples(
    rows: Sequence[Mapping[str, Any]], baseline_rows: Sequence[Mapping[str, Any]] | None
) -> list[str]:
    base_by_id = {row.get("id", index): row for index, row in enumerate(baseline_rows or [])}
    lines = [
        "",
        f"**Sample rows** (first {min(SAMPLE_ROWS, len(rows))} of {len(rows)})",
        "",
        "| id | prompt | base answer | fine-tuned answer | reference |",
        "|---|---|---|---|---|",
    ]
    for index, row in enumerate(rows[:SAMPLE_ROWS]):
        row_id = row.get("id", index)
        base_answer = (
            base_by_id.get(row_id, {}).get("assistant_response") if baseline_rows is not None else None
        )
        cells = [
            row_id,
            row.get("user_prompt"),
            base_answer,
            row.get("assistant_response"),
            row.get("ground_truth"),
        ]
        lines.append(f"| {' | '.join(table_text(cell) for cell in cells)} |")
    return lines


def markdown_preview(
    document: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    baseline_rows: Sequence[Mapping[str, Any]] | None,
) -> str:
    """The report's summary as markdown: scores with intervals (primary metric first and marked),
    definitions, corpus scores, judge usage, and the first few rows side by side."""
    usage = document["judge_usage"]["total"]
    bootstrap = document["bootstrap"]
    lines = [
        *_score_table(document),
        "",
        f"{document['row_count']} rows; intervals: paired percentile bootstrap, {bootstrap['resamples']} "
        f"resamples, seed {bootstrap['seed']}; deltas over the rows scored on both sides. LLM judge: "
        f"{usage['input_tokens']} input + {usage['output_tokens']} output tokens in {usage['requests']} "
        f"requests, ${usage['cost_usd']:.4f}",
        *_spread(document),
        *_corpus(document),
        *_definitions(document),
        *_samples(rows, baseline_rows),
    ]
    return "\n".join(lines)
