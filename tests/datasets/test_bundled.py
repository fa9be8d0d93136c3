from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scsig as sg
from scsig.datasets._bundled import BUNDLED_SHA256


def test_every_bundled_file_has_a_pinned_checksum():
    folder = resources.files("scsig.datasets") / "_data"
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".h5ad"))
    assert files == sorted(BUNDLED_SHA256)
    for name in files:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert digest == BUNDLED_SHA256[name], name


@pytest.mark.parametrize(
    ("loader", "shape"), [(sg.datasets.kang_muscat, (1556, 1267)), (sg.datasets.pbmc3k, (2700, 13714))]
)
def test_bundled_counts(loader, shape):
    adata = loader()
    assert adata.shape == shape
    assert sparse.issparse(adata.X)
    assert adata.X.dtype == np.int32
    assert adata.X.min() >= 0
    np.testing.assert_array_equal(np.asarray(adata.X.sum(axis=1)).ravel(), adata.obs["n_counts"].to_numpy())
    np.testing.assert_array_equal(np.diff(adata.X.indptr), adata.obs["n_genes"].to_numpy())
    assert adata.var_names.is_unique
    # a new object each call: changing one leaves the next untouched
    adata.X.data[:] = 0
    assert loader().X.sum() > 0


def test_kang_muscat_design():
    adata = sg.datasets.kang_muscat()
    for col in ("group_id", "sample_id", "cluster_id"):
        assert isinstance(adata.obs[col].dtype, pd.CategoricalDtype), col
    assert adata.obs["group_id"].value_counts().to_dict() == {"stim": 806, "ctrl": 750}
    assert adata.obs["sample_id"].value_counts().to_dict() == {"stim101": 500, "ctrl101": 454, "stim107": 306, "ctrl107": 296}
    assert adata.obs["cluster_id"].nunique() == 5
    assert adata.var.loc["ISG15", "gene_ids"] == "ENSG00000187608"
    assert adata.obsm["X_tsne"].shape == (1556, 2)
    # the interferon response is visible in the counts (mean log1p CP10k of 12 ISGs, README of the source)
    isgs = ["ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "IFITM3", "OAS1", "LY6E", "IFI44L", "RSAD2"]
    x = adata.X.toarray().astype(float)
    cp10k = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    isg = cp10k[:, adata.var_names.get_indexer(isgs)].mean(axis=1)
    stim = (adata.obs["group_id"] == "stim").to_numpy()
    assert isg[stim].mean() > 2.5
    assert isg[~stim].mean() < 0.5
