"""The plotting functions stay a short list of steps: checks, preparation and drawing live in private helpers."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

import scsig as sg

MAX_BODY_LINES = 60


def _body_lines(func) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    node = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(func)))).body[0]
    body = node.body
    if (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("name", sg.pl.__all__)
def test_public_plot_functions_are_short(name):
    n = _body_lines(getattr(sg.pl, name))
    assert n <= MAX_BODY_LINES, f"sg.pl.{name} has {n} body lines; move checks and drawing into private helpers."


def test_body_lines_counts_from_the_first_statement():
    def f():
        """Doc."""
        x = 1
        return x

    assert _body_lines(f) == 2
