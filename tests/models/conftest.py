"""Fixtures of the model tests: tiny training settings, one thread, and small toy counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import scsig as sg

FAST = {"hidden": (16,), "latent": 8, "epochs": 3, "batch_size": 32, "progress": False}
"""Training options that keep a test's encoder tiny and quick."""


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # tiny models: one thread avoids OpenMP overhead on a shared, loaded CPU
    monkeypatch.setattr(sg.settings, "n_jobs", 1)


@pytest.fixture
def toy_counts():
    """80 cells x 30 genes of counts; groups a/b each raise 8 genes three-fold."""
    rng = np.random.default_rng(0)
    rate = rng.gamma(2.0, 3.0, size=(80, 30))
    group = np.where(np.arange(80) % 2 == 0, "a", "b")
    rate[group == "a", :8] *= 3
    rate[group == "b", 8:16] *= 3
    return AnnData(
        X=sparse.csr_matrix(rng.poisson(rate).astype(np.int32)),
        obs=pd.DataFrame({"group": pd.Categorical(group)}, index=[f"c{i}" for i in range(80)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(30)]),
    )
