from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scsig as sg


def _numpy_prepare(adata, model):
    """SCimilarity's recipe by hand: align (missing genes zero), scale to 1e4 over aligned genes, log1p."""
    dense = pd.DataFrame(np.asarray(adata.X.todense(), dtype=np.float64), columns=adata.var_names)
    aligned = dense.reindex(columns=model.gene_order, fill_value=0.0).to_numpy()
    totals = aligned.sum(1, keepdims=True)
    return np.log1p(np.divide(aligned * 1e4, totals, out=np.zeros_like(aligned), where=totals > 0))


def test_prepare_matches_numpy(toy):
    adata, model = toy
    before = adata.copy()
    out = sg.pp.prepare(adata, model)
    assert list(out.var_names) == model.gene_order
    assert out.X.dtype == np.float32
    np.testing.assert_allclose(out.X.toarray(), _numpy_prepare(adata, model), rtol=1e-6)
    assert out.var["in_data"].sum() == adata.n_vars
    assert out.uns["scsig"]["prepare"]["n_overlap"] == adata.n_vars
    # the input is untouched
    assert (adata.X != before.X).nnz == 0
    assert list(adata.obs.columns) == list(before.obs.columns)


def test_totals_after_alignment(toy):
    """Counts in genes the model lacks do not enter the totals."""
    adata, model = toy
    extra = sparse.csr_matrix(np.full((adata.n_obs, 1), 1000, dtype=np.int32))
    import anndata as ad

    wide = ad.concat([adata, ad.AnnData(extra, obs=adata.obs, var=pd.DataFrame(index=["unknown"]))], axis=1)
    np.testing.assert_allclose(sg.pp.prepare(wide, model).X.toarray(), sg.pp.prepare(adata, model).X.toarray())


def test_gene_symbols_column(toy):
    adata, model = toy
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    with pytest.raises(ValueError, match="gene_symbols="):
        sg.pp.prepare(adata, model)
    out = sg.pp.prepare(adata, model, gene_symbols="symbol")
    assert out.var["in_data"].sum() == adata.n_vars


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (-1.0, "negative"),
        (np.nan, "NaN"),
        (np.inf, "NaN or infinite"),
        (0.5, "non-integer"),
    ],
)
def test_not_counts(toy, values, match):
    adata, model = toy
    x = adata.X.astype(np.float32).toarray()
    x[0, 0] = values
    adata.X = sparse.csr_matrix(x)
    with pytest.raises(ValueError, match=match):
        sg.pp.prepare(adata, model)


def test_log_transformed_hint(toy):
    adata, model = toy
    adata.X = adata.X.astype(np.float32)
    adata.X.data = np.log1p(adata.X.data)
    with pytest.raises(ValueError, match="log-transformed"):
        sg.pp.prepare(adata, model)
    assert sg.pp.prepare(adata, model, check_counts=False).n_obs == adata.n_obs
