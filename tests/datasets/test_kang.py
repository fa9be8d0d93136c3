from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pandas as pd
from scipy import sparse

import scsig as sg
from scsig.datasets._kang import KANG_IFNB_FILE, KANG_IFNB_SHA256


def test_kang_ifnb_contents():
    adata = sg.datasets.kang_ifnb()
    assert adata.shape == (832, 14053)
    assert sparse.issparse(adata.X)
    assert adata.X.dtype == np.int32
    assert adata.X.min() >= 0
    for col in ("stim", "seurat_annotations", "orig.ident"):
        assert isinstance(adata.obs[col].dtype, pd.CategoricalDtype), col
    assert adata.obs["stim"].value_counts().to_dict() == {"STIM": 441, "CTRL": 391}
    types = adata.obs["seurat_annotations"].value_counts()
    assert len(types) == 6
    assert types["CD14 Mono"] == 304
    assert {"ISG15", "IFI6", "MX1", "CD3E", "MS4A1"} <= set(adata.var_names)
    np.testing.assert_array_equal(np.asarray(adata.X.sum(axis=1)).ravel(), adata.obs["n_counts"].to_numpy())


def test_kang_ifnb_interferon_response_is_visible():
    # the ground truth the bundled data must show: mean log1p(CP10k) of 12 ISGs is far higher in STIM
    adata = sg.datasets.kang_ifnb()
    isgs = ["ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "IFITM3", "OAS1", "LY6E", "IFI44L", "RSAD2"]
    x = adata.X.toarray().astype(float)
    cp10k = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    isg = cp10k[:, adata.var_names.get_indexer(isgs)].mean(axis=1)
    stim = (adata.obs["stim"] == "STIM").to_numpy()
    assert isg[stim].mean() > 2.5
    assert isg[~stim].mean() < 0.5


def test_kang_ifnb_fresh_copy_each_call():
    a = sg.datasets.kang_ifnb()
    a.obs["stim"] = "changed"
    a.X.data[:] = 0
    b = sg.datasets.kang_ifnb()
    assert set(b.obs["stim"].cat.categories) == {"CTRL", "STIM"}
    assert b.X.sum() > 0


def test_bundled_file_checksum():
    data = (resources.files("scsig.datasets") / "_data" / KANG_IFNB_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == KANG_IFNB_SHA256
