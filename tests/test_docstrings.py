"""Shared docstring text: every public function with a ``progress`` option documents it the same way."""

from __future__ import annotations

import inspect

import scsig as sg
import scsig.quickstart
from scsig._docs import doc_progress

NAMESPACES = ["pp", "tl", "pl", "get", "models", "datasets"]


def _with_progress():
    funcs = [getattr(getattr(sg, ns), name) for ns in NAMESPACES for name in getattr(sg, ns).__all__]
    funcs += [scsig.quickstart.run]
    funcs += [m for name, m in inspect.getmembers(sg.Atlas, inspect.isfunction) if not name.startswith("_")]
    funcs += [sg.Atlas.from_signature.__func__]
    return [f for f in funcs if inspect.isfunction(f) and "progress" in inspect.signature(f).parameters]


def test_progress_is_documented_by_the_shared_snippet():
    funcs = _with_progress()
    assert len(funcs) >= 5
    text = " ".join(doc_progress.split()[1:])  # without the parameter name
    missing = [f.__qualname__ for f in funcs if text not in " ".join((f.__doc__ or "").split())]
    assert not missing, f"use {{doc_progress}} in: {missing}"


def test_no_public_docstring_keeps_a_shared_snippet_placeholder():
    funcs = [getattr(getattr(sg, ns), name) for ns in NAMESPACES for name in getattr(sg, ns).__all__]
    funcs += [m for _, m in inspect.getmembers(sg.Atlas, inspect.isfunction)]
    left = [f.__qualname__ for f in funcs if callable(f) and "{doc_" in (f.__doc__ or "")]
    assert not left, f"doc_params was not applied to: {left}"


pytest_plugins = ["pytester"]


def test_a_warning_in_a_docstring_example_fails_it(pytester):
    """The root conftest.py turns warnings into errors in docstring examples; here on a two-example module."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pytester.makeconftest((root / "conftest.py").read_text())
    pytester.makepyfile(
        mod='''
        def warns():
            """
            >>> import warnings
            >>> warnings.warn("integrated gradients not converged", UserWarning)
            """


        def clean():
            """
            >>> 1 + 1
            2
            """
        '''
    )
    result = pytester.runpytest("--doctest-modules", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*UserWarning*integrated gradients not converged*"])
    config = (root / "pyproject.toml").read_text()
    assert '"--doctest-modules"' in config
    assert '"src/scsig"' in config, "the docstring examples run with the suite"
