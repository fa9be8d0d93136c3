"""Choice arguments of sg.Atlas are checked against their Literal before any work."""

from __future__ import annotations

import pytest

import scsig as sg


def test_attribute_unknown_on_error(tmp_path, attributed_toy):
    adata, model = attributed_toy
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    with pytest.raises(ValueError, match=r"on_error must be one of 'raise', 'warn'; got 'ignore'"):
        atlas.attribute(adata, model, names="a", on_error="ignore", progress=False)
    assert atlas.datasets == []
