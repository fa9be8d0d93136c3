"""Execute every notebook in tutorials/ (the same way tutorials/run_all.py does) and fail on any error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"


def _runner():
    spec = importlib.util.spec_from_file_location("scsig_tutorials_run_all", TUTORIALS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def test_tutorials_found():
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs(path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _runner().execute(path, save=False)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_committed_with_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    assert all(c.get("execution_count") for c in code), f"{path.name}: run tutorials/run_all.py and commit the outputs"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was saved with an error output"
    assert "session_info" in "".join(c.source for c in code[-1:]), f"{path.name} must end with session_info.show()"
