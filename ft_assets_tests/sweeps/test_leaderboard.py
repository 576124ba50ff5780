"""The leaderboard on hand-made candidate records: ranking, the paired comparison with the leader
(cross-checked against a plain numpy bootstrap), the winner rule, and its files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openpyxl import load_workbook

from ft_assets.phases.comparison import Bootstrap
from ft_assets.sweeps.leaderboard import build_leaderboard, markdown_table, write_leaderboard

ROWS = 40
BOOTSTRAP = Bootstrap(resamples=1000, seed=3, confidence=0.95)


def record(
    name: str, scores: list[float | None], tokens: int, vs_base_low: float, **params: Any
) -> dict[str, Any]:
    finite = [s for s in scores if s is not None]
    mean = float(np.mean(finite)) if finite else math.nan
    return {
        "candidate": name,
        "params": params or {"rank": 8},
        "primary_metric": "exact_match",
        # ids in another order than the leader's: pairing is by id, not position
        "ids": [f"q{i}" for i in range(ROWS)][::-1] if name == "reversed" else [f"q{i}" for i in range(ROWS)],
        "scores": scores[::-1] if name == "reversed" else scores,
        "summary": {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "count": len(finite)},
        "vs_base": {"delta": 0.3, "delta_ci_low": vs_base_low, "delta_ci_high": 0.5},
        "cost": {"steps": tokens // 100, "trained_tokens": tokens, "train_seconds": tokens / 50},
        "model": {
            "path": f"/models/{name}",
            "merged_path": None,
            "fingerprint": name,
            "mlflow_model_uri": None,
        },
        "evaluation": {"json_path": f"/reports/{name}.json", "xlsx_path": f"/reports/{name}.xlsx"},
    }


def numpy_paired_interval(a: list[float], b: list[float], bootstrap: Bootstrap) -> tuple[float, float, float]:
    """Percentile bootstrap of mean(a - b): the textbook procedure, written out with numpy alone."""
    delta = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(bootstrap.seed)
    draws = rng.integers(0, len(delta), size=(bootstrap.resamples, len(delta)))
    low, high = np.quantile(delta[draws].mean(axis=1), [0.025, 0.975])
    return float(delta.mean()), float(low), float(high)


@pytest.fixture
def records() -> list[dict[str, Any]]:
    leader = [1.0] * 36 + [0.0] * 4  # 0.9
    close = [1.0] * 35 + [0.0] * 5  # 0.875: one row worse than the leader
    behind = [1.0] * 16 + [0.0] * 24  # 0.4
    return [
        record("leader", leader, tokens=3000, vs_base_low=0.1),
        record("close", close, tokens=1000, vs_base_low=0.05),
        record("behind", behind, tokens=500, vs_base_low=0.0),
        # as good as the leader and the cheapest, but significantly worse than the base model
        record("worse-than-base", leader, tokens=100, vs_base_low=-0.2),
        record("failed", [None] * ROWS, tokens=50, vs_base_low=math.nan),
    ]


def test_winner_is_the_cheapest_eligible_candidate_tied_with_the_leader(
    records: list[dict[str, Any]],
) -> None:
    board = build_leaderboard(records, bootstrap=BOOTSTRAP, margin=0.02)
    rows = {row["candidate"]: row for row in board["candidates"]}
    assert [row["candidate"] for row in board["candidates"]][:2] == [
        "leader",
        "worse-than-base",
    ]  # mean, then name
    assert board["leader"] == "leader" and board["winner"] == "close"
    assert board["winner_model"]["path"] == "/models/close"
    assert rows["close"]["status"] == "winner" and rows["leader"]["status"] == "leader"
    assert rows["behind"]["status"] == "behind leader" and not rows["behind"]["tied_with_leader"]
    assert rows["worse-than-base"]["status"] == "worse than base" and not rows["worse-than-base"]["eligible"]
    assert rows["failed"]["status"] == "not scored" and rows["failed"]["rank"] == 5
    assert "cheapest eligible candidate tied with the leader" in board["rule"] and "-0.02" in board["rule"]


def test_the_paired_delta_against_the_leader_matches_a_plain_numpy_bootstrap(
    records: list[dict[str, Any]],
) -> None:
    board = build_leaderboard(records, bootstrap=BOOTSTRAP, margin=0.02)
    rows = {row["candidate"]: row for row in board["candidates"]}
    for name in ("close", "behind"):
        mine = next(r for r in records if r["candidate"] == name)["scores"]
        theirs = next(r for r in records if r["candidate"] == "leader")["scores"]
        delta, low, high = numpy_paired_interval(mine, theirs, BOOTSTRAP)
        got = rows[name]["vs_leader"]
        assert (got["delta"], got["delta_ci_low"], got["delta_ci_high"]) == pytest.approx((delta, low, high))
    assert rows["close"]["vs_leader"]["delta"] == pytest.approx(-1 / ROWS)
    assert rows["close"]["vs_leader"]["delta_ci_high"] >= 0 > rows["behind"]["vs_leader"]["delta_ci_high"]


def test_rows_are_paired_by_id_not_position(records: list[dict[str, Any]]) -> None:
    twin = record("reversed", records[0]["scores"], tokens=9000, vs_base_low=0.1)
    board = build_leaderboard([records[0], twin], bootstrap=BOOTSTRAP, margin=0.02)
    row = next(r for r in board["candidates"] if r["candidate"] == "reversed")
    assert row["vs_leader"] == {"delta": 0.0, "delta_ci_low": 0.0, "delta_ci_high": 0.0}
    assert board["winner"] == "leader"  # tied; the cheaper one


def test_no_eligible_candidate_means_no_winner(records: list[dict[str, Any]]) -> None:
    board = build_leaderboard([records[3], records[4]], bootstrap=BOOTSTRAP, margin=0.02)
    assert board["winner"] is None and board["winner_model"] is None
    assert "winner: **none**" in markdown_table(board)


def test_mixed_primary_metrics_are_refused(records: list[dict[str, Any]]) -> None:
    other = {**records[1], "primary_metric": "rouge_score"}
    with pytest.raises(ValueError, match="different primary metrics"):
        build_leaderboard([records[0], other], bootstrap=BOOTSTRAP, margin=0.02)


def test_files_keep_untrusted_text_as_text(records: list[dict[str, Any]], tmp_path: Path) -> None:
    records[1]["params"] = {"chat_template": '=HYPERLINK("http://x","click")', "rank": 8}
    board = build_leaderboard(records, bootstrap=BOOTSTRAP, margin=0.02)
    json_path, xlsx_path = write_leaderboard(tmp_path / "board", board)
    saved = json.loads(json_path.read_text())
    assert saved["winner"] == "close" and saved["candidates"][-1]["mean"] is None  # NaN -> null
    sheet = load_workbook(xlsx_path).active
    header = [cell.value for cell in sheet[1]]
    assert header[:4] == ["#", "candidate", "mean", "95% CI"] and "chat_template" in header
    cells = [cell for row in sheet.iter_rows() for cell in row if isinstance(cell.value, str)]
    assert any(cell.value.startswith("=HYPERLINK") for cell in cells)
    assert {cell.data_type for cell in cells} == {"s"}
    table = markdown_table(board)
    assert table.count("\n| ") == len(records) and "| close |" in table
