"""The sweep leaderboard: every candidate's primary metric with paired confidence intervals against the
base model and against the leader, its training cost, and the winner, as JSON + xlsx + markdown.

Framework-free: the candidates' result records (written by the sweep's evaluation step) in, plain data
and files out. Intervals come from :mod:`ft_assets.phases.comparison` (the same seeded paired bootstrap
as the evaluation report); every metric here is higher-is-better.

The winner rule (:data:`WINNER_RULE`): the *leader* is the candidate with the highest primary mean. A
candidate is *eligible* when its paired delta against the base model is not worse than ``[evaluator]
not_worse_margin`` (the release gate's test: ``delta_ci_low >= -margin``; every candidate is eligible
without a baseline), and *tied with the leader* when the interval of its paired delta against the leader
reaches 0 (``delta_ci_high >= 0``: not significantly worse). The winner is the cheapest eligible candidate
tied with the leader (fewest trained tokens, then fewest training seconds), ties to the higher mean, then
the name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ft_assets.phases.comparison import Bootstrap, paired_comparison
from ft_assets.phases.formatting import estimate_text, interval_text, number_text
from ft_assets.phases.io import atomic_file, write_json
from ft_assets.phases.metrics import MetricScores

LEADERBOARD_JSON = "leaderboard.json"
LEADERBOARD_XLSX = "leaderboard.xlsx"
WINNER_RULE = (
    "leader = highest mean {metric}; eligible = paired delta vs base not worse than the margin "
    "(ci_low >= -{margin}); tied = paired delta vs the leader not significantly below 0 (ci_high >= 0); "
    "winner = the cheapest eligible candidate tied with the leader (fewest trained tokens, then training "
    "seconds), ties to the higher mean, then the name"
)
COLUMNS = (
    ("rank", "#"),
    ("candidate", "candidate"),
    ("mean", "mean"),
    ("ci", "95% CI"),
    ("vs_base", "vs base (paired)"),
    ("vs_leader", "vs leader (paired)"),
    ("steps", "steps"),
    ("trained_tokens", "tokens"),
    ("train_seconds", "train s"),
    ("status", "status"),
)


def _scores(record: Mapping[str, Any]) -> tuple[list[dict[str, str]], MetricScores]:
    metric = record["primary_metric"]
    values = [math.nan if v is None else float(v) for v in record["scores"]]
    rows = [{"id": row_id} for row_id in record["ids"]]
    return rows, MetricScores(per_row={metric: values}, errors={metric: [None] * len(values)})


def _delta(entry: Mapping[str, Any] | None) -> dict[str, float]:
    keys = ("delta", "delta_ci_low", "delta_ci_high")
    return {key: float(entry[key]) if entry else math.nan for key in keys}


def _finite(value: float) -> bool:
    return not math.isnan(value)


def build_leaderboard(
    records: Sequence[Mapping[str, Any]], *, bootstrap: Bootstrap, margin: float
) -> dict[str, Any]:
    """The leaderboard of the candidates' result ``records`` (one per candidate, all on one primary
    metric): rows ranked by mean, the leader, the winner and the rule that chose it."""
    if not records:
        raise ValueError("a leaderboard needs at least one candidate result")
    metrics = {record["primary_metric"] for record in records}
    if len(metrics) != 1:
        raise ValueError(f"the candidates were scored on different primary metrics: {sorted(metrics)}")
    metric = metrics.pop()
    scored = {record["candidate"]: _scores(record) for record in records}
    summary = {record["candidate"]: record["summary"] for record in records}
    by_mean = sorted(
        records,
        key=lambda r: (-r["summary"]["mean"] if _finite(r["summary"]["mean"]) else math.inf, r["candidate"]),
    )
    leader = by_mean[0]["candidate"] if _finite(by_mean[0]["summary"]["mean"]) else None
    rows = []
    for rank, record in enumerate(by_mean, start=1):
        name = record["candidate"]
        vs_leader = {"delta": 0.0, "delta_ci_low": 0.0, "delta_ci_high": 0.0}
        if leader is not None and name != leader:
            comparison = paired_comparison(*scored[name], *scored[leader], bootstrap)
            vs_leader = _delta(comparison.get(metric))
        vs_base = _delta(record.get("vs_base"))
        cost = record["cost"]
        finite = _finite(summary[name]["mean"])
        rows.append(
            {
                "rank": rank,
                "candidate": name,
                "leader": name == leader,
                "params": dict(record["params"]),
                "mean": summary[name]["mean"],
                "ci_low": summary[name]["ci_low"],
                "ci_high": summary[name]["ci_high"],
                "vs_base": vs_base,
                "vs_leader": vs_leader,
                "steps": int(cost["steps"]),
                "trained_tokens": int(cost["trained_tokens"]),
                "train_seconds": float(cost["train_seconds"]),
                "eligible": finite
                and (not _finite(vs_base["delta_ci_low"]) or vs_base["delta_ci_low"] >= -margin),
                "tied_with_leader": finite and leader is not None and vs_leader["delta_ci_high"] >= 0,
                "model": dict(record["model"]),
                "evaluation": dict(record["evaluation"]),
            }
        )
    contenders = [row for row in rows if row["eligible"] and row["tied_with_leader"]]
    winner = min(
        contenders,
        key=lambda row: (row["trained_tokens"], row["train_seconds"], -row["mean"], row["candidate"]),
        default=None,
    )
    for row in rows:
        row["status"] = _status(row, winner)
    return {
        "primary_metric": metric,
        "leader": leader,
        "winner": winner["candidate"] if winner else None,
        "winner_model": dict(winner["model"]) if winner else None,
        "rule": WINNER_RULE.format(metric=metric, margin=margin),
        "bootstrap": {
            "resamples": bootstrap.resamples,
            "seed": bootstrap.seed,
            "confidence": bootstrap.confidence,
        },
        "candidates": rows,
    }


def _status(row: Mapping[str, Any], winner: Mapping[str, Any] | None) -> str:
    if winner is not None and row["candidate"] == winner["candidate"]:
        return "winner"
    if not _finite(row["mean"]):
        return "not scored"
    if not row["eligible"]:
        return "worse than base"
    if row["leader"]:
        return "leader"
    return "tied with leader" if row["tied_with_leader"] else "behind leader"


def _delta_text(delta: Mapping[str, float]) -> str:
    return estimate_text(
        delta["delta"], delta["delta_ci_low"], delta["delta_ci_high"], signed=True, signed_bounds=False
    )


def _cells(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "rank": row["rank"],
        "candidate": row["candidate"],
        "mean": number_text(row["mean"]),
        "ci": interval_text(row["ci_low"], row["ci_high"]),
        "vs_base": _delta_text(row["vs_base"]),
        "vs_leader": "leader" if row["leader"] else _delta_text(row["vs_leader"]),
        "steps": row["steps"],
        "trained_tokens": row["trained_tokens"],
        "train_seconds": f"{row['train_seconds']:.1f}",
        "status": row["status"],
    }


def _escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(board: Mapping[str, Any]) -> str:
    """The leaderboard as a markdown table, with the winner and the rule under it."""
    lines = [
        "| " + " | ".join(title for _key, title in COLUMNS) + " |",
        "|"
        + "|".join(
            "---:" if key in ("rank", "steps", "trained_tokens", "train_seconds") else "---"
            for key, _ in COLUMNS
        )
        + "|",
    ]
    for row in board["candidates"]:
        cells = _cells(row)
        lines.append("| " + " | ".join(_escape(cells[key]) for key, _title in COLUMNS) + " |")
    lines += [
        "",
        f"Primary metric: `{board['primary_metric']}`; winner: **{board['winner'] or 'none'}**.",
        f"Rule: {board['rule']}.",
    ]
    return "\n".join(lines)


def write_leaderboard(out_dir: Path, board: Mapping[str, Any]) -> tuple[Path, Path]:
    """``leaderboard.json`` and ``leaderboard.xlsx`` in ``out_dir``, each written atomically; text cells are
    stored as strings (a candidate value starting with ``=`` never becomes a formula)."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    from ft_assets.phases.report_workbook import put

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = write_json(out_dir / LEADERBOARD_JSON, _json_safe(board))
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "Leaderboard"
    keys = sorted({key for row in board["candidates"] for key in row["params"]})
    header = [title for _key, title in COLUMNS] + keys
    for column, title in enumerate(header, start=1):
        put(sheet, 1, column, title).font = Font(bold=True)
    for number, row in enumerate(board["candidates"], start=2):
        cells = _cells(row)
        values = [cells[key] for key, _title in COLUMNS] + [row["params"].get(key) for key in keys]
        for column, value in enumerate(values, start=1):
            put(sheet, number, column, value)
    footer = len(board["candidates"]) + 3
    put(sheet, footer, 1, "winner")
    put(sheet, footer, 2, board["winner"] or "none")
    put(sheet, footer + 1, 1, "rule")
    put(sheet, footer + 1, 2, board["rule"])
    xlsx_path = out_dir / LEADERBOARD_XLSX
    with atomic_file(xlsx_path, "wb") as handle:
        workbook.save(handle)
    return json_path, xlsx_path


def _json_safe(value: Any) -> Any:
    """NaN as ``null`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value
