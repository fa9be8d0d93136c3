from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

import scsig as sg


def test_counts_invert_scanpys_normalized_values():
    adata = sg.datasets.pbmc68k_reduced()
    assert adata.shape == (700, 765)
    assert sparse.issparse(adata.X)
    assert adata.X.dtype == np.int32
    assert adata.X.min() >= 0
    source = sc.datasets.pbmc68k_reduced()
    assert adata.var_names.tolist() == source.raw.var_names.tolist()
    # normalizing the recovered counts by the cells' totals over all genes gives back scanpy's .raw
    x = adata.X.toarray().astype(np.float64)
    again = np.log1p(x / adata.obs["n_counts"].to_numpy()[:, None] * 1e4)
    np.testing.assert_allclose(again, source.raw.X.toarray(), rtol=0, atol=1e-3)  # the file keeps ~3 decimals
    # the 765 genes hold part of each cell's counts; n_counts is the total over all genes
    assert np.all(x.sum(axis=1) < adata.obs["n_counts"].to_numpy())


def test_labels_and_fresh_objects():
    adata = sg.datasets.pbmc68k_reduced()
    counts = adata.obs["bulk_labels"].value_counts()
    assert counts["CD14+ Monocyte"] == 129
    assert counts["CD56+ NK"] == 31
    assert counts["CD8+ Cytotoxic T"] + counts["CD8+/CD45RA+ Naive Cytotoxic"] == 97
    assert adata.obsm["X_umap"].shape == (700, 2)
    # the marker genes of the sorted populations are highest in their own type
    x = adata.X.toarray()
    for label, gene in [("CD19+ B", "CD79A"), ("CD56+ NK", "GNLY"), ("CD14+ Monocyte", "S100A8")]:
        own = (adata.obs["bulk_labels"] == label).to_numpy()
        col = adata.var_names.get_loc(gene)
        assert x[own, col].mean() > 3 * x[~own, col].mean(), label
    adata.X.data[:] = 0
    assert sg.datasets.pbmc68k_reduced().X.sum() > 0


def test_a_file_without_log_normalized_raw_is_refused(monkeypatch):
    source = sc.datasets.pbmc68k_reduced()
    changed = source.raw.to_adata()
    changed.X = changed.X * 1.37  # no longer log1p of counts per 10,000
    source.raw = changed
    monkeypatch.setattr(sc.datasets, "pbmc68k_reduced", lambda: source)
    with pytest.raises(ValueError, match=r"does not hold log1p\(counts per 10,000\)"):
        sg.datasets.pbmc68k_reduced()
