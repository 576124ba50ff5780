"""Evaluation reports: a JSON summary, a per-sample Excel workbook, and a markdown preview.

Framework-free: rows and :class:`~ft_assets.phases.metrics.MetricScores` in, files out. Both files
are written into a temporary directory beside ``out_dir`` and moved into place together, so a reader
never sees half a report. NaN scores (rows whose metric failed) become ``null`` in JSON and empty
cells in Excel.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ft_assets.phases.io import apply_umask
from ft_assets.phases.metrics import JudgeUsage, MetricScores, summarize

SUMMARY_JSON = "evaluation_summary.json"
REPORT_XLSX = "evaluation_report.xlsx"
_EXCEL_CELL_LIMIT = 32_767  # characters Excel keeps in one cell
_SCORE_FORMAT = "0.0000"


@dataclass
class ReportPaths:
    """Where the report went, and its summary table as markdown (for the Dagster UI)."""

    json_path: Path
    xlsx_path: Path
    markdown: str


def write_report(
    out_dir: Path,
    *,
    rows: list[dict],
    scores: MetricScores,
    baseline_rows: list[dict] | None,
    baseline_scores: MetricScores | None,
    primary_metric: str,
    provenance: dict,
    durations_s: dict,
) -> ReportPaths:
    """Write ``evaluation_summary.json`` and ``evaluation_report.xlsx`` into ``out_dir`` atomically.

    ``baseline_rows``/``baseline_scores`` (the base model's answers to the same prompts, matched by
    ``id``) add base columns, per-metric deltas (fine-tuned mean - base mean) and the comparison chart.
    An existing ``out_dir`` is replaced as a whole.
    """
    _check_alignment("scores", rows, scores)
    if (baseline_rows is None) != (baseline_scores is None):
        raise ValueError("baseline_rows and baseline_scores must be given together")
    if baseline_rows is not None and baseline_scores is not None:
        _check_alignment("baseline_scores", baseline_rows, baseline_scores)
    if primary_metric not in scores.per_row:
        raise ValueError(f"primary metric {primary_metric!r} was not scored (scored: {list(scores.per_row)})")

    document = _summary_document(
        rows,
        scores,
        baseline_scores,
        primary_metric=primary_metric,
        provenance=provenance,
        durations_s=durations_s,
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    apply_umask(staging)  # mkdtemp is owner-only; a teammate must be able to read the report
    try:
        (staging / SUMMARY_JSON).write_text(
            json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        _write_workbook(staging / REPORT_XLSX, document, rows, scores, baseline_rows, baseline_scores)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ReportPaths(out_dir / SUMMARY_JSON, out_dir / REPORT_XLSX, _markdown(document))


def _check_alignment(what: str, rows: Sequence[Mapping[str, Any]], scores: MetricScores) -> None:
    for name, values in scores.per_row.items():
        if len(values) != len(rows):
            raise ValueError(f"{what}: metric {name!r} has {len(values)} scores for {len(rows)} rows")


def _summary_document(
    rows: Sequence[Mapping[str, Any]],
    scores: MetricScores,
    baseline_scores: MetricScores | None,
    *,
    primary_metric: str,
    provenance: Mapping[str, Any],
    durations_s: Mapping[str, Any],
) -> dict[str, Any]:
    fine_tuned = summarize(scores)
    base = summarize(baseline_scores) if baseline_scores is not None else None
    delta = (
        {name: fine_tuned[name]["mean"] - base[name]["mean"] for name in fine_tuned if name in base}
        if base is not None
        else None
    )
    usages = [scores.judge_usage] + ([baseline_scores.judge_usage] if baseline_scores is not None else [])
    total = JudgeUsage(
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        requests=sum(u.requests for u in usages),
        cost_usd=sum(u.cost_usd for u in usages),
    )
    return {
        "primary_metric": primary_metric,
        "primary": {
            "fine_tuned_mean": fine_tuned[primary_metric]["mean"],
            "base_mean": base[primary_metric]["mean"] if base and primary_metric in base else None,
            "delta": delta.get(primary_metric) if delta is not None else None,
        },
        "row_count": len(rows),
        "metrics": {"fine_tuned": fine_tuned, "base": base, "delta": delta},
        "judge_usage": {
            "fine_tuned": asdict(scores.judge_usage),
            "base": asdict(baseline_scores.judge_usage) if baseline_scores is not None else None,
            "total": asdict(total),
        },
        "durations_s": dict(durations_s),
        "metric_durations_s": {
            "fine_tuned": dict(scores.durations_s),
            "base": dict(baseline_scores.durations_s) if baseline_scores is not None else None,
        },
        "provenance": dict(provenance),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None and paths, dates and other objects as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    previous = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(previous)
    try:
        staging.rename(out_dir)
    except OSError:
        previous.rename(out_dir)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _fmt(value: Any, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _markdown(document: Mapping[str, Any]) -> str:
    """The per-metric summary as a markdown table, primary metric first and marked."""
    metrics = document["metrics"]
    fine_tuned, base, delta = metrics["fine_tuned"], metrics["base"], metrics["delta"]
    primary = document["primary_metric"]
    names = [primary, *(name for name in fine_tuned if name != primary)]
    lines = [
        "| metric | fine-tuned mean | base mean | delta | scored rows | failed rows |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        stats = fine_tuned[name]
        label = f"**{name}** (primary)" if name == primary else name
        base_mean = base[name]["mean"] if base and name in base else None
        change = delta.get(name) if delta else None
        lines.append(
            f"| {label} | {_fmt(stats['mean'])} | {_fmt(base_mean)} | {_fmt(change, signed=True)} "
            f"| {stats['count']} | {stats['nan_count']} |"
        )
    usage = document["judge_usage"]["total"]
    lines.append("")
    lines.append(
        f"{document['row_count']} rows; LLM judge: {usage['input_tokens']} input + {usage['output_tokens']} "
        f"output tokens in {usage['requests']} requests, ${usage['cost_usd']:.4f}"
    )
    return "\n".join(lines)


def _cell(value: Any) -> Any:
    """A value openpyxl can store: NaN as empty, text without control characters, at most one cell long."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(_jsonable(value), ensure_ascii=False)
    text = ILLEGAL_CHARACTERS_RE.sub("", text)
    if len(text) > _EXCEL_CELL_LIMIT:
        marker = " [truncated]"
        text = text[: _EXCEL_CELL_LIMIT - len(marker)] + marker
    return text


def _write_table(
    sheet: Any, header: Sequence[str], body: Sequence[Sequence[Any]], *, first_row: int = 1
) -> None:
    from openpyxl.styles import Font

    for column, title in enumerate(header, start=1):
        sheet.cell(row=first_row, column=column, value=title).font = Font(bold=True)
    for offset, values in enumerate(body, start=1):
        for column, value in enumerate(values, start=1):
            cell = sheet.cell(row=first_row + offset, column=column, value=_cell(value))
            if isinstance(cell.value, float):
                cell.number_format = _SCORE_FORMAT


def _write_workbook(
    path: Path,
    document: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    scores: MetricScores,
    baseline_rows: Sequence[Mapping[str, Any]] | None,
    baseline_scores: MetricScores | None,
) -> None:
    from openpyxl import Workbook
    from openpyxl.chart import BarChart, Reference
    from openpyxl.styles import Font

    workbook = Workbook()
    names = list(scores.per_row)
    fine_tuned, base, delta = (document["metrics"][key] for key in ("fine_tuned", "base", "delta"))

    summary = workbook.active
    summary.title = "Summary"
    usage = document["judge_usage"]["total"]
    facts = [
        ("Primary metric", document["primary_metric"]),
        ("Rows", document["row_count"]),
        ("Judge input tokens", usage["input_tokens"]),
        ("Judge output tokens", usage["output_tokens"]),
        ("Judge requests", usage["requests"]),
        ("Judge cost (USD)", usage["cost_usd"]),
        ("Created at", document["created_at"]),
    ]
    for row_number, (label, value) in enumerate(facts, start=1):
        summary.cell(row=row_number, column=1, value=label).font = Font(bold=True)
        summary.cell(row=row_number, column=2, value=_cell(value))
    stat_keys = ["mean", "median", "std", "min", "max", "count", "nan_count"]
    table_start = len(facts) + 2
    _write_table(
        summary,
        ["metric", *(f"fine-tuned {key}" for key in stat_keys), "base mean", "delta"],
        [
            [
                name,
                *(fine_tuned[name][key] for key in stat_keys),
                base[name]["mean"] if base and name in base else None,
                delta.get(name) if delta else None,
            ]
            for name in names
        ],
        first_row=table_start,
    )
    extra_start = table_start + len(names) + 2
    extras = [
        *((f"duration {key} (s)", value) for key, value in document["durations_s"].items()),
        *((f"provenance {key}", value) for key, value in document["provenance"].items()),
    ]
    _write_table(summary, ["item", "value"], extras, first_row=extra_start)
    summary.column_dimensions["A"].width = 32

    per_sample = workbook.create_sheet("Per-sample")
    with_base = baseline_rows is not None
    base_rows = list(baseline_rows or [])
    base_per_row = baseline_scores.per_row if baseline_scores is not None else {}
    base_by_id = {row.get("id", index): index for index, row in enumerate(base_rows)}
    base_names = [name for name in names if name in base_per_row]
    header = ["id", "system_prompt", "user_prompt", "ground_truth", "response"]
    header += ["base_response"] if with_base else []
    header += names + [f"base {name}" for name in base_names] + ["errors"]
    body = []
    for index, row in enumerate(rows):
        row_id = row.get("id", index)
        base_index = base_by_id.get(row_id)
        values = [row_id, row.get("system_prompt"), row.get("user_prompt"), row.get("ground_truth")]
        values.append(row.get("assistant_response"))
        if with_base:
            values.append(base_rows[base_index].get("assistant_response") if base_index is not None else None)
        values += [scores.per_row[name][index] for name in names]
        values += [base_per_row[name][base_index] if base_index is not None else None for name in base_names]
        errors = [f"{name}: {scores.errors[name][index]}" for name in names if scores.errors[name][index]]
        values.append("\n".join(errors) or None)
        body.append(values)
    _write_table(per_sample, header, body)
    per_sample.freeze_panes = "B2"
    for letter in ("B", "C", "D", "E", "F"):
        per_sample.column_dimensions[letter].width = 40

    comparison = workbook.create_sheet("Comparison")
    _write_table(
        comparison,
        ["metric", "base mean", "fine-tuned mean", "delta"],
        [
            [
                name,
                base[name]["mean"] if base and name in base else None,
                fine_tuned[name]["mean"],
                delta.get(name) if delta else None,
            ]
            for name in names
        ],
    )
    comparison.column_dimensions["A"].width = 28
    chart = BarChart()
    chart.type = "col"
    chart.title = "Mean score per metric: base vs fine-tuned" if base else "Mean score per metric"
    chart.y_axis.title = "mean score"
    first_series_column = 2 if base else 3
    data = Reference(comparison, min_col=first_series_column, max_col=3, min_row=1, max_row=len(names) + 1)
    chart.add_data(data, titles_from_data=True)
    chart.set_categories(Reference(comparison, min_col=1, min_row=2, max_row=len(names) + 1))
    chart.width, chart.height = 18, 9
    comparison.add_chart(chart, "F2")

    workbook.save(path)
