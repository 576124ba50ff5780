"""Evaluation reports: a JSON summary, a per-sample Excel workbook, and a markdown preview.

Framework-free: rows and :class:`~ft_assets.phases.metrics.MetricScores` in, files out. Both files
are written into a temporary directory beside ``out_dir`` and moved into place together, so a reader
never sees half a report. NaN scores (rows whose metric failed) become ``null`` in JSON and empty
cells in Excel. Every mean carries a bootstrap interval (``ci_low``/``ci_high``); deltas are paired
(see :mod:`ft_assets.phases.comparison`); each metric's definition and corpus-level score travel with it.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ft_assets.errors import FtAssetsError
from ft_assets.phases import report_workbook
from ft_assets.phases.comparison import (
    Bootstrap,
    failed_row_ids,
    mean_interval,
    paired_comparison,
    row_ids,
)
from ft_assets.phases.io import apply_umask
from ft_assets.phases.metrics import JudgeUsage, MetricScores, summarize
from ft_assets.phases.report_preview import markdown_preview

SUMMARY_JSON = "evaluation_summary.json"
REPORT_XLSX = "evaluation_report.xlsx"


class ReportError(FtAssetsError, ValueError):
    """A report's files lack what a reader needs; the message names the file and the key."""


@dataclass
class ReportPaths:
    """Where the report went, its summary document (as in the JSON) and its markdown preview."""

    json_path: Path
    xlsx_path: Path
    markdown: str
    document: dict[str, Any] = field(default_factory=dict)


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
    bootstrap: Bootstrap | None = None,
    definitions: Mapping[str, Mapping[str, str]] | None = None,
    corpus_scores: Mapping[str, Mapping[str, float] | None] | None = None,
) -> ReportPaths:
    """Write ``evaluation_summary.json`` and ``evaluation_report.xlsx`` into ``out_dir`` atomically.

    ``baseline_rows``/``baseline_scores`` (the base model's answers to the same prompts, matched by
    ``id``) add base columns, paired per-metric deltas (fine-tuned - base over the rows scored on both
    sides) with their intervals, and the comparison chart. ``definitions`` (per metric: library,
    variant, tokenizer, ...) and ``corpus_scores`` (``{"fine_tuned": {...}, "base": {...}}``) are
    reported as given. An existing ``out_dir`` is replaced as a whole.
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
        baseline_rows,
        baseline_scores,
        primary_metric=primary_metric,
        provenance=provenance,
        durations_s=durations_s,
        bootstrap=bootstrap or Bootstrap(),
        definitions=definitions or {},
        corpus_scores=corpus_scores or {},
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    apply_umask(staging)  # mkdtemp is owner-only; a teammate must be able to read the report
    try:
        (staging / SUMMARY_JSON).write_text(
            json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        report_workbook.write_workbook(
            staging / REPORT_XLSX, document, rows, scores, baseline_rows, baseline_scores
        )
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    preview = markdown_preview(document, rows, baseline_rows)
    return ReportPaths(out_dir / SUMMARY_JSON, out_dir / REPORT_XLSX, preview, document)


def primary_metric_result(json_path: str | Path) -> dict[str, Any]:
    """What the report at ``json_path`` says of its primary metric, for a caller that ranks reports (the
    sweep leaderboard) without scoring anything again: ``metric``; the fine-tuned rows' ``ids`` and their
    ``scores`` (``None`` where a row failed); ``summary`` (``mean``, ``ci_low``, ``ci_high``, ``count``) and
    ``vs_base``, the paired comparison with the base model (``None`` without a baseline), whose numbers
    the report stores as null come back as NaN."""
    path = Path(json_path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: cannot read the evaluation summary: {error}") from error
    metric = _at(path, document, "primary_metric")
    summary = _at(path, document, "metrics", "fine_tuned", metric)
    vs_base = (_at(path, document, "comparison") or {}).get(metric)
    return {
        "metric": metric,
        "ids": _at(path, document, "per_row", "fine_tuned", "ids"),
        "scores": _at(path, document, "per_row", "fine_tuned", "scores", metric),
        "summary": {key: _nan_for_null(summary.get(key)) for key in ("mean", "ci_low", "ci_high", "count")},
        "vs_base": {key: _nan_for_null(value) for key, value in vs_base.items()} if vs_base else None,
    }


def _at(path: Path, document: Any, *keys: str) -> Any:
    value = document
    for depth, key in enumerate(keys, start=1):
        if not isinstance(value, Mapping) or key not in value:
            raise ReportError(
                f"{path}: the evaluation summary has no {'.'.join(keys[:depth])!r} (a report written by an "
                "older version? evaluate again)"
            )
        value = value[key]
    return value


def _nan_for_null(value: Any) -> Any:
    return math.nan if value is None else value


def _check_alignment(what: str, rows: Sequence[Mapping[str, Any]], scores: MetricScores) -> None:
    for name, values in scores.per_row.items():
        if len(values) != len(rows):
            raise ValueError(f"{what}: metric {name!r} has {len(values)} scores for {len(rows)} rows")


def _with_intervals(scores: MetricScores, bootstrap: Bootstrap) -> dict[str, dict[str, float]]:
    """:func:`summarize`'s stats per metric plus the bootstrap interval of the mean."""
    summary = summarize(scores)
    for name, values in scores.per_row.items():
        interval = mean_interval(values, bootstrap)
        summary[name].update(ci_low=interval["ci_low"], ci_high=interval["ci_high"])
    return summary


def _per_row(rows: Sequence[Mapping[str, Any]], scores: MetricScores, side: str) -> dict[str, Any]:
    """Each row's id and, per metric, its score in row order (NaN, stored as null: the row failed)."""
    return {
        "ids": row_ids(rows, side),
        "scores": {name: list(values) for name, values in scores.per_row.items()},
    }


def _summary_document(
    rows: Sequence[Mapping[str, Any]],
    scores: MetricScores,
    baseline_rows: Sequence[Mapping[str, Any]] | None,
    baseline_scores: MetricScores | None,
    *,
    primary_metric: str,
    provenance: Mapping[str, Any],
    durations_s: Mapping[str, Any],
    bootstrap: Bootstrap,
    definitions: Mapping[str, Mapping[str, str]],
    corpus_scores: Mapping[str, Mapping[str, float] | None],
) -> dict[str, Any]:
    fine_tuned = _with_intervals(scores, bootstrap)
    base = comparison = delta = None
    failed = {"fine_tuned": failed_row_ids(rows, scores, "fine-tuned"), "base": None}
    if baseline_rows is not None and baseline_scores is not None:
        base = _with_intervals(baseline_scores, bootstrap)
        comparison = paired_comparison(rows, scores, baseline_rows, baseline_scores, bootstrap)
        delta = {name: entry["delta"] for name, entry in comparison.items()}
        failed["base"] = failed_row_ids(baseline_rows, baseline_scores, "base")
    usages = [scores.judge_usage] + ([baseline_scores.judge_usage] if baseline_scores is not None else [])
    total = JudgeUsage(
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        requests=sum(u.requests for u in usages),
        cost_usd=sum(u.cost_usd for u in usages),
    )
    paired = (comparison or {}).get(primary_metric, {})
    tuned_primary = fine_tuned[primary_metric]
    base_primary = (base or {}).get(primary_metric, {})
    return {
        "primary_metric": primary_metric,
        "primary": {
            "fine_tuned_mean": tuned_primary["mean"],
            "fine_tuned_ci_low": tuned_primary["ci_low"],
            "fine_tuned_ci_high": tuned_primary["ci_high"],
            "base_mean": base_primary.get("mean"),
            "base_ci_low": base_primary.get("ci_low"),
            "base_ci_high": base_primary.get("ci_high"),
            "delta": paired.get("delta"),
            "delta_ci_low": paired.get("delta_ci_low"),
            "delta_ci_high": paired.get("delta_ci_high"),
            "pairs": paired.get("pairs"),
        },
        "row_count": len(rows),
        "metrics": {"fine_tuned": fine_tuned, "base": base, "delta": delta},
        "comparison": comparison,
        "per_row": {
            "fine_tuned": _per_row(rows, scores, "fine-tuned"),
            "base": (
                _per_row(baseline_rows, baseline_scores, "base")
                if baseline_rows is not None and baseline_scores is not None
                else None
            ),
        },
        "failed_rows": failed,
        "definitions": {name: dict(definitions.get(name, {})) for name in scores.per_row},
        "corpus_scores": {key: dict(value) if value else None for key, value in corpus_scores.items()},
        "bootstrap": asdict(bootstrap),
        "judge_spread": {
            "samples": scores.judge_samples,
            "fine_tuned": dict(scores.sample_std),
            "base": dict(baseline_scores.sample_std) if baseline_scores is not None else None,
        },
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
