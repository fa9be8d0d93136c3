"""Choices declared once as a :data:`typing.Literal`, checked with one message."""

from __future__ import annotations

from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["check_choice", "literal_values"]


def literal_values(choices: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` (also nested, or in a union with other types; ``None`` in a union counts), in order.

    Examples
    --------
    >>> from typing import Literal
    >>> literal_values(Literal["ig", "dl"] | None)
    ('ig', 'dl', None)
    >>> literal_values(Literal["ig"] | int)
    ('ig',)
    """
    if get_origin(choices) is Literal:
        return tuple(get_args(choices))
    out: list[Any] = []
    if get_origin(choices) in (Union, type(int | None)):
        for arg in get_args(choices):
            values = (None,) if arg is type(None) else literal_values(arg)
            out.extend(v for v in values if v not in out)
    return tuple(out)


def _matches(value: Any, choice: Any) -> bool:
    if choice is None or value is None:
        return value is choice
    if not isinstance(value, type(choice)) or isinstance(value, bool) != isinstance(choice, bool):
        return False
    return bool(value == choice)


def check_choice(name: str, value: Any, choices: Any) -> Any:
    """``value`` if it is one of the ``Literal`` ``choices``, else a ValueError naming them.

    Examples
    --------
    >>> from typing import Literal
    >>> check_choice("engine", "fast", Literal["auto", "captum", "fast"])
    'fast'
    >>> check_choice("engine", "gpu", Literal["auto", "captum", "fast"])
    Traceback (most recent call last):
    ...
    ValueError: engine must be one of 'auto', 'captum', 'fast'; got 'gpu'.
    """
    allowed = literal_values(choices)
    if not allowed:
        msg = f"{choices!r} declares no Literal values."
        raise TypeError(msg)
    if not any(_matches(value, a) for a in allowed):
        msg = f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}."
        raise ValueError(msg)
    return value
