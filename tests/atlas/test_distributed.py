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


def test_attribute_on_local_cluster(tmp_path):
    """Datasets attributed on a cluster (two at a time) equal the in-process build, in the sources' order."""
    import anndata as ad

    adata, model = sg.datasets.toy()
    paths = []
    for k, (lo, hi) in enumerate([(0, 20), (20, 45), (45, 60)]):
        paths.append(tmp_path / f"p{k}.h5ad")
        adata[lo:hi].copy().write_h5ad(paths[-1])
    local = sg.Atlas.create(tmp_path / "local", gene_order=model.gene_order)
    local.attribute([str(p) for p in paths], model, batch_size=8)
    bad = adata[:5].copy()
    bad.X = bad.X.astype(np.float32)
    bad.X.data[0] = 0.5  # not an integer count: this dataset fails on the worker
    sources = [str(paths[0]), ad.read_h5ad(paths[1], backed="r"), bad, str(paths[2])]
    remote = sg.Atlas.create(tmp_path / "remote", gene_order=model.gene_order)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
        pytest.warns(UserWarning, match="1 of 4 datasets failed"),
    ):
        report = remote.attribute(
            sources, model, names=["p0", "p1", "bad", "p2"], client=client, batch_size=8, on_error="warn", progress=True
        )
    assert report["status"].tolist() == ["added", "added", "failed", "added"]
    assert "integer" in report.loc["bad", "error"]
    assert remote.datasets == local.datasets == ["p0", "p1", "p2"]
    want, got = local.to_anndata(), remote.to_anndata()
    pd.testing.assert_frame_equal(got.obs, want.obs)
    assert (got.layers["attr_ig"] != want.layers["attr_ig"]).nnz == 0
    assert list((remote.path / "tmp").iterdir()) == []
