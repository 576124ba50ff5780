"""The evaluation workbook: Summary (definitions, intervals, corpus scores), Per-sample, Comparison + chart.

Every text cell is stored as a string (``data_type = "s"``), so model answers, prompts, references, ids
and errors that start with ``=`` (or look like an Excel error code) are never evaluated as formulas.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ft_assets.phases.metrics import MetricScores

_EXCEL_CELL_LIMIT = 32_767  # characters Excel keeps in one cell
_SCORE_FORMAT = "0.0000"
#: Definition fields shown in the Summary sheet, in this order (others follow alphabetically).
DEFINITION_FIELDS = ("library", "variant", "tokenizer", "normalisation", "aggregation")


def _cell_value(value: Any) -> Any:
    """A value openpyxl can store: NaN as empty, text without control characters, at most one cell long."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = ILLEGAL_CHARACTERS_RE.sub("", text)
    if len(text) > _EXCEL_CELL_LIMIT:
        marker = " [truncated]"
        text = text[: _EXCEL_CELL_LIMIT - len(marker)] + marker
    return text


def put(sheet: Any, row: int, column: int, value: Any) -> Any:
    """Store ``value`` in a cell; text always as a plain string, never a formula or an error code."""
    cell = sheet.cell(row=row, column=column)
    cell.value = _cell_value(value)
    if isinstance(cell.value, str):
        cell.data_type = "s"
    elif isinstance(cell.value, float):
        cell.number_format = _SCORE_FORMAT
    return cell


def _write_table(
    sheet: Any, header: Sequence[str], body: Sequence[Sequence[Any]], *, first_row: int = 1
) -> int:
    """Write a bold header and its rows from ``first_row``; returns the first free row after a gap."""
    from openpyxl.styles import Font

    for column, title in enumerate(header, start=1):
        put(sheet, first_row, column, title).font = Font(bold=True)
    for offset, values in enumerate(body, start=1):
        for column, value in enumerate(values, start=1):
            put(sheet, first_row + offset, column, value)
    return first_row + len(body) + 2


def definition_fields(definitions: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The definition fields present, the usual ones first."""
    present = {key for definition in definitions.values() for key in definition}
    return [key for key in DEFINITION_FIELDS if key in present] + sorted(present - set(DEFINITION_FIELDS))


def _summary_sheet(sheet: Any, document: Mapping[str, Any], names: Sequence[str]) -> None:
    from openpyxl.styles import Font

    fine_tuned, base = document["metrics"]["fine_tuned"], document["metrics"]["base"] or {}
    comparison = document["comparison"] or {}
    usage = document["judge_usage"]["total"]
    bootstrap = document["bootstrap"]
    facts = [
        ("Primary metric", document["primary_metric"]),
        ("Rows", document["row_count"]),
        (
            "Intervals",
            f"{bootstrap['confidence']:.0%} paired percentile bootstrap, {bootstrap['resamples']} resamples, "
            f"seed {bootstrap['seed']}",
        ),
        ("Judge input tokens", usage["input_tokens"]),
        ("Judge output tokens", usage["output_tokens"]),
        ("Judge requests", usage["requests"]),
        ("Judge cost (USD)", usage["cost_usd"]),
        ("Judge samples per row", document["judge_spread"]["samples"]),
        ("Created at", document["created_at"]),
    ]
    for row_number, (label, value) in enumerate(facts, start=1):
        put(sheet, row_number, 1, label).font = Font(bold=True)
        put(sheet, row_number, 2, value)
    stat_keys = ["mean", "ci_low", "ci_high", "median", "std", "min", "max", "count", "nan_count"]
    delta_keys = ["delta", "delta_ci_low", "delta_ci_high", "pairs"]
    next_row = _write_table(
        sheet,
        [
            "metric",
            *(f"fine-tuned {key}" for key in stat_keys),
            *(f"base {key}" for key in ("mean", "ci_low", "ci_high")),
            "delta (paired)",
            "delta ci_low",
            "delta ci_high",
            "pairs",
            "judge spread (mean per-row std)",
        ],
        [
            [
                name,
                *(fine_tuned[name][key] for key in stat_keys),
                *(base.get(name, {}).get(key) for key in ("mean", "ci_low", "ci_high")),
                *(comparison.get(name, {}).get(key) for key in delta_keys),
                document["judge_spread"]["fine_tuned"].get(name),
            ]
            for name in names
        ],
        first_row=len(facts) + 2,
    )
    corpus = document["corpus_scores"]
    corpus_names = sorted({key for side in corpus.values() if side for key in side})
    if corpus_names:
        next_row = _write_table(
            sheet,
            ["corpus score", "fine-tuned", "base"],
            [
                [key, (corpus.get("fine_tuned") or {}).get(key), (corpus.get("base") or {}).get(key)]
                for key in corpus_names
            ],
            first_row=next_row,
        )
    definitions = document["definitions"]
    fields = definition_fields(definitions)
    if fields:
        next_row = _write_table(
            sheet,
            ["definition", *fields],
            [[name, *(definitions.get(name, {}).get(key) for key in fields)] for name in names],
            first_row=next_row,
        )
    extras = [
        *((f"duration {key} (s)", value) for key, value in document["durations_s"].items()),
        *((f"provenance {key}", value) for key, value in document["provenance"].items()),
    ]
    _write_table(sheet, ["item", "value"], extras, first_row=next_row)
    sheet.column_dimensions["A"].width = 32


def _per_sample_sheet(
    sheet: Any,
    rows: Sequence[Mapping[str, Any]],
    scores: MetricScores,
    baseline_rows: Sequence[Mapping[str, Any]] | None,
    baseline_scores: MetricScores | None,
) -> None:
    names = list(scores.per_row)
    with_base = baseline_rows is not None
    base_rows = list(baseline_rows or [])
    base_per_row = baseline_scores.per_row if baseline_scores is not None else {}
    base_by_id = {row.get("id", index): index for index, row in enumerate(base_rows)}
    base_names = [name for name in names if name in base_per_row]
    header = ["id", "system_prompt", "user_prompt", "ground_truth", "response"]
    header += ["base_response"] if with_base else []
    spread_names = [name for name in names if scores.judge_samples > 1 and name in scores.per_row_std]
    header += names + [f"{name} std ({scores.judge_samples} judge samples)" for name in spread_names]
    header += [f"base {name}" for name in base_names] + ["errors"]
    body = []
    for index, row in enumerate(rows):
        row_id = row.get("id", index)
        base_index = base_by_id.get(row_id)
        values = [row_id, row.get("system_prompt"), row.get("user_prompt"), row.get("ground_truth")]
        values.append(row.get("assistant_response"))
        if with_base:
            values.append(base_rows[base_index].get("assistant_response") if base_index is not None else None)
        values += [scores.per_row[name][index] for name in names]
        values += [scores.per_row_std[name][index] for name in spread_names]
        values += [base_per_row[name][base_index] if base_index is not None else None for name in base_names]
        errors = [f"{name}: {scores.errors[name][index]}" for name in names if scores.errors[name][index]]
        values.append("\n".join(errors) or None)
        body.append(values)
    _write_table(sheet, header, body)
    sheet.freeze_panes = "B2"
    for letter in ("B", "C", "D", "E", "F"):
        sheet.column_dimensions[letter].width = 40


def _comparison_sheet(sheet: Any, document: Mapping[str, Any], names: Sequence[str]) -> None:
    from openpyxl.chart import BarChart, Reference

    fine_tuned, base = document["metrics"]["fine_tuned"], document["metrics"]["base"]
    comparison = document["comparison"] or {}
    _write_table(
        sheet,
        ["metric", "base mean", "fine-tuned mean", "delta", "delta ci_low", "delta ci_high", "pairs"],
        [
            [
                name,
                base[name]["mean"] if base and name in base else None,
                fine_tuned[name]["mean"],
                *(
                    comparison.get(name, {}).get(key)
                    for key in ("delta", "delta_ci_low", "delta_ci_high", "pairs")
                ),
            ]
            for name in names
        ],
    )
    sheet.column_dimensions["A"].width = 28
    chart = BarChart()
    chart.type = "col"
    chart.title = "Mean score per metric: base vs fine-tuned" if base else "Mean score per metric"
    chart.y_axis.title = "mean score"
    first_series_column = 2 if base else 3
    data = Reference(sheet, min_col=first_series_column, max_col=3, min_row=1, max_row=len(names) + 1)
    chart.add_data(data, titles_from_data=True)
    chart.set_categories(Reference(sheet, min_col=1, min_row=2, max_row=len(names) + 1))
    chart.width, chart.height = 18, 9
    sheet.add_chart(chart, "I2")


def write_workbook(
    path: Path,
    document: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    scores: MetricScores,
    baseline_rows: Sequence[Mapping[str, Any]] | None,
    baseline_scores: MetricScores | None,
) -> None:
    """Write the three sheets of the report for ``document`` (the JSON summary) to ``path``."""
    from openpyxl import Workbook

    workbook = Workbook()
    names = list(scores.per_row)
    summary = workbook.active
    summary.title = "Summary"
    _summary_sheet(summary, document, names)
    _per_sample_sheet(workbook.create_sheet("Per-sample"), rows, scores, baseline_rows, baseline_scores)
    _comparison_sheet(workbook.create_sheet("Comparison"), document, names)
    workbook.save(path)
