"""Backed AnnData (and views of it), copy=True on backed input, and the low-overlap warning."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

import scsig as sg


@pytest.fixture
def files(toy, tmp_path):
    adata, model = toy
    counts = tmp_path / "counts.h5ad"
    adata.write_h5ad(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = sg.tl.attribute(adata, model, copy=True)
    sg.tl.score(full, ["g0", "g1", "g5"])
    scored = tmp_path / "scored.h5ad"
    full.write_h5ad(scored)
    return counts, scored, full, model


@pytest.mark.parametrize(("view", "copy"), [(True, False), (False, True), (True, True), (False, False)])
def test_attribute_score_hits_on_backed(files, view, copy):
    counts, scored, full, model = files
    expected = full[5:20] if view else full
    a = ad.read_h5ad(counts, backed="r")
    a = a[5:20] if view else a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = sg.tl.attribute(a, model, copy=copy)
    out = out if copy else a
    np.testing.assert_allclose(out.layers["attr_ig"].toarray(), expected.layers["attr_ig"].toarray(), atol=1e-3)
    if copy:
        assert "attr_ig" not in a.layers
    b = ad.read_h5ad(scored, backed="r")
    b = b[5:20] if view else b
    out = sg.tl.score(b, ["g0", "g1", "g5"], key_added="again", copy=copy)
    out = out if copy else b
    np.testing.assert_allclose(out.obs["again"], expected.obs["score"])
    out = sg.tl.hits(out, "again", copy=copy) or out
    assert out.obs["again_hit"].sum() == sg.tl.hits(expected, "score", copy=True).obs["score_hit"].sum()


def test_low_overlap_warns_and_names_hvg(toy):
    adata, model = toy
    sub = adata[:, : int(adata.n_vars * 0.4)].copy()
    with pytest.warns(UserWarning, match=r"sees only \d+ of its \d+ genes .* highly variable genes"):
        sg.tl.attribute(sub, model)
    tiny = adata[:, :2].copy()
    with pytest.raises(ValueError, match="highly variable genes"):
        sg.tl.attribute(tiny, model, min_overlap=5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*sees only")
        sg.tl.attribute(adata[:, : int(adata.n_vars * 0.9)].copy(), model, n_steps=200)
