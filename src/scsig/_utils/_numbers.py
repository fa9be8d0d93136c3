"""Numeric arguments checked at the door, once, with messages that name the argument."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

__all__ = ["check_number"]


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> Any:
    """``value`` if it is a number of the right kind and range, else a TypeError or ValueError naming ``name``.

    Booleans and strings are refused (``"95"`` is not 95), as are non-finite values; with
    ``integer=True`` only whole numbers of an integer type pass (``2.5`` and ``2.0`` do not).

    Examples
    --------
    >>> check_number("n_steps", 50, integer=True, minimum=1)
    50
    >>> check_number("cut", "95")
    Traceback (most recent call last):
    ...
    TypeError: cut must be a number, not str ('95').
    """
    kind = Integral if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "a whole number" if integer else "a number"
        msg = f"{name} must be {what}, not {type(value).__name__} ({value!r:.40})."
        raise TypeError(msg)
    if not integer and not math.isfinite(float(value)):
        msg = f"{name} must be a finite number, got {value!r}."
        raise ValueError(msg)
    low_bad = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    if low_bad or (maximum is not None and value > maximum):
        bounds = []
        if minimum is not None:
            bounds.append(f"{'above' if exclusive_minimum else 'at least'} {minimum:g}")
        if maximum is not None:
            bounds.append(f"at most {maximum:g}")
        msg = f"{name} must be {' and '.join(bounds)}; got {value!r}."
        raise ValueError(msg)
    return value
