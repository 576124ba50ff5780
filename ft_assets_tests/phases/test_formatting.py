"""The one ``mean [low, high]`` format of the reports, on missing, infinite and negative values, and the three
places that print it (report preview, demo table, sweep leaderboard) agreeing with it."""

from __future__ import annotations

import math

import pytest

from ft_assets.phases.formatting import estimate_text, interval_text, is_number, number_text

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (0.5, {}, "0.500"),
        (-0.25, {}, "-0.250"),
        (-0.25, {"signed": True}, "-0.250"),
        (0.25, {"signed": True}, "+0.250"),
        (0.0, {"signed": True}, "+0.000"),
        (1, {"digits": 4}, "1.0000"),
        (-1e-9, {}, "-0.000"),  # rounds like Python's format, sign kept
        (INF, {}, "inf"),
        (-INF, {"signed": True}, "-inf"),
        (INF, {"signed": True}, "+inf"),
        (NAN, {}, "n/a"),
        (None, {}, "n/a"),
        (NAN, {"missing": "-"}, "-"),
        (True, {}, "n/a"),  # a flag is not a score
        ("0.5", {}, "n/a"),
    ],
)
def test_number_text(value: object, kwargs: dict, expected: str) -> None:
    assert number_text(value, **kwargs) == expected


def test_interval_text_needs_both_bounds() -> None:
    assert interval_text(-0.5, 0.25) == "[-0.500, 0.250]"
    assert interval_text(-0.5, 0.25, signed=True, digits=1) == "[-0.5, +0.2]"
    assert interval_text(-INF, INF) == "[-inf, inf]"
    assert interval_text(NAN, 0.25) == "n/a" and interval_text(0.1, None) == "n/a"
    assert interval_text(None, None, missing="-") == "-"


def test_estimate_text_mean_interval_and_missing_parts() -> None:
    assert estimate_text(0.5, 0.4, 0.6) == "0.500 [0.400, 0.600]"
    assert estimate_text(-0.1, -0.3, 0.05, signed=True) == "-0.100 [-0.300, +0.050]"
    assert estimate_text(0.1, -0.3, 0.5, signed=True, signed_bounds=False) == "+0.100 [-0.300, 0.500]"
    assert estimate_text(0.5, NAN, NAN) == "0.500"  # no interval: the mean alone
    assert estimate_text(0.5) == "0.500"
    assert estimate_text(NAN, 0.4, 0.6) == "n/a" and estimate_text(None, missing="-") == "-"
    assert estimate_text(INF, 0.0, INF, digits=1) == "inf [0.0, inf]"
    assert not is_number(NAN) and is_number(-INF) and is_number(3)


def test_the_three_report_formats_are_the_shared_one() -> None:
    from ft_assets.phases.report_preview import _with_interval
    from ft_assets.report_demo import _cell
    from ft_assets.sweeps.leaderboard import _delta_text

    # preview: 4 decimals, bounds signed with the mean
    assert _with_interval(0.1, -0.05, 0.25, signed=True) == "+0.1000 [-0.0500, +0.2500]"
    assert _with_interval(NAN, NAN, NAN) == _with_interval(None, 0.1, 0.2) == "n/a"
    # demo table: 3 decimals, "-" for a metric the side lacks
    assert _cell(-0.125, -0.5, 0.25) == "-0.125 [-0.500, 0.250]"
    assert _cell(None) == _cell(NAN, 0.1, 0.2) == "-" and _cell(0.5) == "0.500"
    # leaderboard: a signed delta, unsigned bounds
    delta = {"delta": 0.1, "delta_ci_low": -0.05, "delta_ci_high": 0.25}
    assert _delta_text(delta) == "+0.100 [-0.050, 0.250]"
    assert _delta_text({**delta, "delta": NAN}) == "n/a"
