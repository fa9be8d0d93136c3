"""sg.pp on views and backed data: the input is left alone, backed counts are read."""

from __future__ import annotations

import anndata as ad
import numpy as np

import scsig as sg


def test_prepare_leaves_a_view_alone(toy):
    adata, model = toy
    view = adata[adata.obs["group"] == "a"]
    out = sg.pp.prepare(view, model)
    assert view.is_view
    assert out.n_obs == view.n_obs


def test_prepare_backed(toy, tmp_path):
    adata, model = toy
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    expected = sg.pp.prepare(adata, model)
    got = sg.pp.prepare(ad.read_h5ad(path, backed="r"), model)
    np.testing.assert_array_equal(got.X.toarray(), expected.X.toarray())


def test_missing_gene_symbols_match_nothing(toy):
    adata, model = toy
    adata.var["symbol"] = [*adata.var_names[:-2], np.nan, np.nan]
    got = sg.pp.prepare(adata, model, gene_symbols="symbol")
    expected = sg.pp.prepare(adata[:, :-2].copy(), model)
    np.testing.assert_array_equal(got.var["in_data"], expected.var["in_data"])
    assert not got.var.loc[adata.var_names[-2:], "in_data"].any()
    np.testing.assert_array_equal(got.X.toarray(), expected.X.toarray())
