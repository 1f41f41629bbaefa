"""
Argument checks shared by the package: each refuses a bad value with a :class:`ValueError` that
names the argument and the form expected, before anything changes.
"""

import math
from numbers import Integral, Real

__all__ = ["check_int", "check_number"]


def check_int(value, name, low=1):
    """``value`` as an int of at least ``low`` (a bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        what = {1: "a positive int", 0: "a non-negative int"}.get(low, f"an int of at least {low}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_number(value, name, interval="(0, inf)", what=None):
    """
    ``value`` as a float inside ``interval``, written as in mathematics: ``"(0, 1]"``, ``"[0, inf)"``.
    The error says ``{name} must be {what}``, by default ``a number in {interval}``.

    Usage::

        lr = check_number(lr, "lr", "(0, inf)", "a positive number")
    """
    low, high = (float(x) for x in interval[1:-1].split(","))
    inside = (
        not isinstance(value, bool)
        and isinstance(value, Real)
        and not math.isnan(value)
        and (value > low if interval[0] == "(" else value >= low)
        and (value < high if interval[-1] == ")" else value <= high)
    )
    if not inside:
        raise ValueError(f"{name} must be {what or 'a number in ' + interval}, got {value!r}")
    return float(value)
