"""How the reports write a score and its confidence interval as text: ``mean [low, high]``.

One format for the evaluation report's markdown preview, ``make demo``'s terminal table and the sweep
leaderboard; each picks its number of decimals, whether the numbers carry a sign, and the text of a
missing value. A missing value is ``None`` or NaN (a failed or unscored metric); infinities are printed.
"""

from __future__ import annotations

import math
from typing import Any


def is_number(value: Any) -> bool:
    """``value`` is a real number to print (not ``None``, NaN, a bool or text)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def number_text(value: Any, *, digits: int = 3, signed: bool = False, missing: str = "n/a") -> str:
    """``value`` with ``digits`` decimals (``+`` on positive values when ``signed``), or ``missing``."""
    if not is_number(value):
        return missing
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def interval_text(low: Any, high: Any, *, digits: int = 3, signed: bool = False, missing: str = "n/a") -> str:
    """``[low, high]``, or ``missing`` when a bound is missing (an interval with one end is no interval)."""
    if not (is_number(low) and is_number(high)):
        return missing
    bounds = (number_text(bound, digits=digits, signed=signed) for bound in (low, high))
    return "[{}, {}]".format(*bounds)


def estimate_text(
    mean: Any,
    low: Any = None,
    high: Any = None,
    *,
    digits: int = 3,
    signed: bool = False,
    signed_bounds: bool | None = None,
    missing: str = "n/a",
) -> str:
    """``mean [low, high]``; the mean alone when the interval is missing, ``missing`` when the mean is.
    ``signed_bounds`` (default: ``signed``) signs the bounds."""
    if not is_number(mean):
        return missing
    text = number_text(mean, digits=digits, signed=signed)
    bounds_signed = signed if signed_bounds is None else signed_bounds
    if is_number(low) and is_number(high):
        text += " " + interval_text(low, high, digits=digits, signed=bounds_signed)
    return text
