"""docs/api.md lists every public name of every namespace, and nothing that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import scsig as sg

API = Path(__file__).resolve().parents[1] / "docs" / "api.md"
NAMESPACES = ["pp", "tl", "pl", "get", "models", "datasets"]


def _listed() -> set[str]:
    text = API.read_text()
    blocks = re.findall(r"\.\. autosummary::\n((?:[ \t]+:.*\n)*)\n((?:[ \t]+\S.*\n)*)", text)
    return {line.strip() for _, body in blocks for line in body.splitlines() if line.strip()}


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_api_lists_every_public_name(namespace):
    listed = _listed()
    public = {f"{namespace}.{name}" for name in getattr(sg, namespace).__all__}
    missing = sorted(public - listed)
    assert not missing, f"add to docs/api.md: {missing}"


def test_api_lists_only_existing_names():
    for entry in _listed():
        obj = sg
        for part in entry.split("."):
            assert hasattr(obj, part), f"docs/api.md lists {entry!r}, which scsig does not have"
            obj = getattr(obj, part)


def test_api_lists_top_level_objects():
    listed = _listed()
    assert "settings" in listed
    try:
        import scsig.atlas  # noqa: F401
    except ImportError:
        return
    assert "Atlas" in listed, "add Atlas to docs/api.md"
