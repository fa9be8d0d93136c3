"""Docstring examples must run clean: a warning inside one fails it (they teach users what normal output is)."""

from __future__ import annotations

import pytest

DOCTEST_FILTER = "error"
"""The warnings filter every docstring example runs under (``tests/test_docstrings.py`` checks it is applied)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Turn warnings into errors in every docstring example (``--doctest-modules`` items)."""
    for item in items:
        if isinstance(item, pytest.DoctestItem):
            item.add_marker(pytest.mark.filterwarnings(DOCTEST_FILTER))
