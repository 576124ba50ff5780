"""The progress lines a phase writes into the run log (the chain test checks they reach Dagster)."""

from __future__ import annotations

import math

import pytest

from ft_assets.phases import progress as progress_module
from ft_assets.phases.progress import InferenceProgress, duration, remaining


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0 s"),
        (9.94, "9.9 s"),
        (42.4, "42 s"),
        (185, "3 min 05 s"),
        (3725, "1 h 02 min"),
        (math.nan, "?"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_remaining_is_the_pace_so_far() -> None:
    assert remaining(10.0, 2, 8) == pytest.approx(30.0)
    assert math.isnan(remaining(3.0, 0, 8))


def test_inference_progress_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 104.0, 106.0, 109.0, 110.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    lines: list[str] = []
    meter = InferenceProgress(50, lines.append, label="inference", every_s=5.0)  # clock: 100 (created)
    meter.start(batches=4, batch_size=16)  # 104: the clock starts here
    meter.advance(16)  # 106: the first line
    meter.advance(16)  # 109: 3 s after the last line, not logged
    meter.advance(18)  # 110: the last batch is always logged
    assert lines == [
        "inference: 50 rows in 4 batches of up to 16",
        "inference: 16/50 rows (32%), 8.00 rows/s, elapsed 2.0 s, ETA 4.2 s",
        "inference: 50/50 rows (100%), 8.33 rows/s, elapsed 6.0 s, ETA 0.0 s",
    ]
