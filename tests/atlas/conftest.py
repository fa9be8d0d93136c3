"""Fixtures for the atlas tests: attributed toy datasets and small synthetic attribution layers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import scsig as sg

pytest.importorskip("tensorstore")


def synthetic_layer(n_obs: int, genes: list[str], *, density: float = 0.3, seed: int = 0) -> sparse.csr_matrix:
    """A random attribution-like layer: non-negative float32, each non-empty row sums to 1,000."""
    rng = np.random.default_rng(seed)
    x = sparse.random(n_obs, len(genes), density=density, format="csr", dtype=np.float32, random_state=rng)
    x.data = (x.data + 0.01).astype(np.float32)
    totals = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(1000.0, totals, out=np.zeros_like(totals), where=totals > 0)
    x.data *= np.repeat(scale, np.diff(x.indptr)).astype(np.float32)
    return x


def synthetic_adata(n_obs: int, genes: list[str], *, seed: int = 0, prefix: str = "c") -> AnnData:
    """An AnnData whose layer ``attr_ig`` has no provenance (its var names are atlas genes)."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], n_obs)),
            "sample": pd.Categorical([f"s{i % 3}" for i in range(n_obs)]),
            "depth": rng.integers(100, 1000, n_obs),
        },
        index=[f"{prefix}{i}" for i in range(n_obs)],
    )
    adata = AnnData(obs=obs, var=pd.DataFrame(index=genes))
    adata.layers["attr_ig"] = synthetic_layer(n_obs, genes, seed=seed)
    return adata


@pytest.fixture(scope="session")
def attributed_toy():
    """(adata, model): the toy data with an ``attr_ig`` layer from sg.tl.attribute."""
    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, progress=False)
    return adata, model


@pytest.fixture
def genes():
    return [f"G{i}" for i in range(50)]
