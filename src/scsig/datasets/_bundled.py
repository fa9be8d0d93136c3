"""Real example datasets that ship inside the package: reading them and their checksums."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["BUNDLED_SHA256", "read_bundled"]

BUNDLED_SHA256 = {
    "kang_ifnb1k.h5ad": "ee9fef08f89395de25bd3170fc50383ba5bd02d46a5dbd919240ee4e51ee4e58",
    "kang_muscat_example.h5ad": "4621c62960e0149097d22bf1926a77e09b35b1c23ba17c1905aa9ec5bff4d9aa",
    "pbmc3k.h5ad": "86b71f58a07d40402f3bc3ce15e56fa4b4d36b0e7ffef67929392ca261722734",
}
"""SHA-256 of every ``.h5ad`` file in ``scsig/datasets/_data`` (checked by the test suite)."""


def read_bundled(filename: str) -> AnnData:
    """A new AnnData read from a bundled file, with string ``obs`` columns made categorical."""
    import anndata as ad

    source = resources.files(__package__) / "_data" / filename
    with resources.as_file(source) as path:
        adata = ad.read_h5ad(path)
    for col in adata.obs.columns:
        if not isinstance(adata.obs[col].dtype, pd.CategoricalDtype) and adata.obs[col].dtype == object:
            adata.obs[col] = pd.Categorical(adata.obs[col])
    return adata
