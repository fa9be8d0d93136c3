"""Atlas queries on a dask.distributed cluster give the local results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scsig as sg

from .conftest import synthetic_adata

distributed = pytest.importorskip("distributed")


@pytest.fixture
def atlas(tmp_path, genes):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    for k in range(3):
        atlas.add(synthetic_adata(20 + 5 * k, genes, seed=k, prefix=f"d{k}_"), name=f"d{k}")
    return atlas


def test_score_on_local_cluster(atlas):
    sig = {"G2": 1.0, "G7": 2.0, "G9": 0.5}
    local = atlas.score(sig, obs_filter="cell_type != 'NK'")
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = atlas.score(sig, obs_filter="cell_type != 'NK'", client=client, progress=True)
        sub = atlas.to_anndata(["G2", "G7"], datasets=["d1", "d2"], client=client)
    pd.testing.assert_frame_equal(remote, local)
    want = atlas.to_anndata(["G2", "G7"], datasets=["d1", "d2"])
    np.testing.assert_array_equal(sub.layers["attr_ig"].toarray(), want.layers["attr_ig"].toarray())
