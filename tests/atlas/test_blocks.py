"""Atlas.attribute on a cluster with datasets split into blocks of cells: the values of one process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scsig as sg
from scsig.atlas import _cluster, _stream
from scsig.atlas._checks import DamagedDatasetError

distributed = pytest.importorskip("distributed")


def _files(adata, tmp_path, cuts):
    paths = []
    for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        paths.append(tmp_path / f"p{k}.h5ad")
        adata[lo:hi].copy().write_h5ad(paths[-1])
    return [str(p) for p in paths]


def _assert_same(got, want):
    assert got.datasets == want.datasets
    x, y = got.to_anndata(progress=False), want.to_anndata(progress=False)
    pd.testing.assert_frame_equal(x.obs, y.obs)
    assert x.layers["attr_ig"].nnz == y.layers["attr_ig"].nnz > 0
    assert (x.layers["attr_ig"] != y.layers["attr_ig"]).nnz == 0  # identical values, not just close
    for a, b in zip(got._manifest["shards"], want._manifest["shards"], strict=True):
        assert (a["n_obs"], a["nnz"]) == (b["n_obs"], b["nnz"])
        prov_a = {k: v for k, v in a["provenance"].items() if k != "model"}
        prov_b = {k: v for k, v in b["provenance"].items() if k != "model"}
        assert prov_a == prov_b  # the completeness gaps of all blocks together, as in one run
    assert list((got.path / "tmp").iterdir()) == []


def test_block_bounds():
    cuts = _stream.block_bounds(103, 4, 8)
    assert cuts[0] == 0
    assert cuts[-1] == 103
    assert np.all(np.diff(cuts) >= 0)
    assert np.all(cuts[:-1] % 8 == 0)  # every block starts on a batch of the whole run
    assert cuts.tolist() == [0, 24, 48, 72, 103]  # 13 batches: 3, 3, 3 and 4
    assert _stream.block_bounds(3000, 2, 512).tolist() == [0, 1536, 3000]  # within one batch of equal
    assert _stream.block_bounds(10, 3, 16).tolist() == [0, 0, 0, 10]  # fewer batches than blocks: empty ones
    assert _cluster.n_blocks(5000, None) == 1
    assert _cluster.n_blocks(5000, 6000) == 1
    assert _cluster.n_blocks(5000, 2000) == 2
    assert _cluster.cells_per_task(12_000, 2) == _cluster.MIN_TASK_CELLS
    assert _cluster.cells_per_task(1_000_000, 2) == 125_000


def test_default_split_only_where_whole_datasets_do_not_balance():
    assert _cluster.default_per_task([6000] * 4, 2) is None  # two datasets per worker: even
    assert _cluster.default_per_task([5000, 4000, 3000, 2000], 2) is None  # 7,000 each
    assert _cluster.default_per_task([8000] * 3, 2) == _cluster.cells_per_task(24_000, 2)  # 16,000 vs 12,000
    assert _cluster.default_per_task([1_000_000], 2) == 125_000  # one large dataset
    assert _cluster.default_per_task([10, 500], 1) is None  # one thread: nothing to even out


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    """The toy data in two files, attributed in this process (batches of 4 cells, 10 steps)."""
    tmp = tmp_path_factory.mktemp("blocks")
    adata, model = sg.datasets.toy()
    paths = _files(adata, tmp, (0, 27, 60))
    local = sg.Atlas.create(tmp / "local", gene_order=model.gene_order)
    local.attribute(paths, model, batch_size=4, n_steps=10, progress=False)
    gaps = [s["provenance"]["completeness_gap"] for s in local._manifest["shards"]]
    assert [g["n_cells"] for g in gaps] == [27, 33]  # the gaps of all cells, measured as they were attributed
    assert all(np.isfinite(g["median"]) for g in gaps)
    return adata, model, paths, local


def test_blocks_on_threads_equal_one_process(local_build, tmp_path, monkeypatch):
    """Blocks of 10 cells on a one-worker cluster: the values, obs and records of the in-process build."""
    import numba
    import torch
    from threadpoolctl import threadpool_info

    _, model, paths, local = local_build
    seen = []
    spill = _stream._spill_cells

    def spy(run, rows, *args, **kwargs):
        blas = [p["num_threads"] for p in threadpool_info()]
        seen.append((rows, torch.get_num_threads(), numba.get_num_threads(), max(blas, default=1)))
        return spill(run, rows, *args, **kwargs)

    monkeypatch.setattr(_stream, "_spill_cells", spy)
    remote = sg.Atlas.create(tmp_path / "remote", gene_order=model.gene_order)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        report = remote.attribute(paths, model, client=client, cells_per_task=10, batch_size=4, n_steps=10)
    assert report["status"].tolist() == ["added", "added"]
    _assert_same(remote, local)
    rows = sorted(r for r, *_ in seen)
    # 27 cells in 3 blocks and 33 in 3, each starting on a multiple of the batch size
    assert rows == [(0, 8), (0, 12), (8, 16), (12, 24), (16, 27), (24, 33)]
    assert {tuple(threads) for _, *threads in seen} == {(1, 1, 1)}  # torch, numba and BLAS: the worker's one thread


def test_blocks_on_processes_equal_one_process(local_build, tmp_path):
    """Two worker processes (models, spills and records pickled), and the default block size."""
    _, model, paths, local = local_build
    remote = sg.Atlas.create(tmp_path / "remote", gene_order=model.gene_order)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        report = remote.attribute(
            paths, model, client=client, cells_per_task=12, batch_size=4, n_steps=10, progress=False
        )
        default = sg.Atlas.create(tmp_path / "default", gene_order=model.gene_order)
        default.attribute(paths, model, client=client, batch_size=4, n_steps=10, progress=False)  # one task each
    assert report["status"].tolist() == ["added", "added"]
    _assert_same(remote, local)
    _assert_same(default, local)


def test_failed_block_fails_its_dataset_only(local_build, tmp_path):
    """A bad cell in one block: that dataset fails and leaves nothing; the others are added; a rerun adds it."""
    adata, model, paths, local = local_build
    bad = adata[27:60].copy()
    bad.X = bad.X.astype(np.float32)
    bad.X.data[bad.X.indptr[25]] = 0.5  # cell 25: in the last block, not the first
    remote = sg.Atlas.create(tmp_path / "remote", gene_order=model.gene_order)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        with pytest.warns(UserWarning, match="1 of 2 datasets failed"):
            report = remote.attribute(
                [paths[0], bad], model, names=["p0", "p1"], client=client, cells_per_task=10, batch_size=4,
                n_steps=10, on_error="warn", progress=False,
            )  # fmt: skip
        assert report["status"].tolist() == ["added", "failed"]
        assert "integer" in report.loc["p1", "error"]
        assert remote.datasets == ["p0"]
        assert list((remote.path / "tmp").iterdir()) == []  # the failed dataset's blocks left nothing
        assert len(list((remote.path / "shards").iterdir())) == 1
        bad.X.data[bad.X.indptr[25]] = adata[27:60].X.data[adata[27:60].X.indptr[25]]
        report = remote.attribute(
            [paths[0], bad], model, names=["p0", "p1"], client=client, cells_per_task=10, batch_size=4, n_steps=10,
            progress=False,
        )  # fmt: skip
    assert report["status"].tolist() == ["skipped", "added"]
    _assert_same(remote, local)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "100", True])
def test_cells_per_task_is_checked(local_build, tmp_path, bad):
    _, model, paths, _ = local_build
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    with pytest.raises(ValueError, match="cells_per_task must be a positive number of cells"):
        atlas.attribute(paths, model, cells_per_task=bad, progress=False)
    assert atlas.datasets == []


def test_top_score_of_blocks_equals_in_memory_top(local_build, tmp_path, monkeypatch):
    """Per-cell sums collected per block and joined by the merge task: Atlas.score's "top" is tl.score's in memory.

    The toy model has 42 genes, so a top-300 sum is the whole total; a second build with top-10 sums
    (stored at add time as top-300 ones are) makes the factors differ from 1 and cell order matter.
    """
    from scsig.atlas import _rowstats
    from scsig.tl import _score_modes

    adata, model, paths, _ = local_build
    built = {}
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        for top_k in (300, 10):
            monkeypatch.setattr(_score_modes, "DEFAULT_TOP_K", top_k)
            monkeypatch.setattr(_rowstats, "compute_row_stats", None)  # collected by the blocks, not read back
            built[top_k] = sg.Atlas.create(tmp_path / f"top{top_k}", gene_order=model.gene_order)
            report = built[top_k].attribute(paths, model, client=client, cells_per_task=10, batch_size=4, n_steps=10)
            assert report["status"].tolist() == ["added", "added"]
    monkeypatch.undo()
    sig = {"g1": 1.0, "g7": 2.0, "g20": 0.5, "g33": 1.0}
    memory = {}
    for k, part in enumerate((adata[:27].copy(), adata[27:].copy())):
        sg.tl.attribute(part, model, batch_size=4, n_steps=10, progress=False)
        memory[f"p{k}"] = part
    for top_k, atlas in built.items():
        entries = atlas._manifest["shards"]
        assert [e["row_stats"] for e in entries] == [{"top_k": top_k, "norms": True}] * 2
        monkeypatch.setattr(_rowstats, "compute_row_stats", None)  # the stored sums are read, not recomputed
        kwds = {"mode_kwds": {"top_k": top_k}}
        frame = sg.Atlas.open(atlas.path).score(sig, mode="top", **kwds)
        monkeypatch.undo()
        assert frame.attrs["scsig"]["mode"] == "top"
        for name, part in memory.items():
            sg.tl.score(part, sig, mode="top", key_added=f"top{top_k}", **kwds)
            got = frame.loc[frame["dataset"] == name, "score"].to_numpy()
            np.testing.assert_allclose(got, part.obs[f"top{top_k}"].to_numpy(), rtol=1e-6)
            # the stored sums themselves, against numpy on the in-memory attributions
            shard = atlas.path / "shards" / next(e["dir"] for e in entries if e["name"] == name)
            totals, tops = _rowstats.read_row_stats(shard, part.n_obs, name)
            x = np.abs(part.layers["attr_ig"].toarray().astype(np.float64))
            np.testing.assert_allclose(totals, x.sum(axis=1), rtol=1e-5)
            np.testing.assert_allclose(tops, -np.sort(-x, axis=1)[:, :top_k].sum(axis=1), rtol=1e-5)
            norms = _rowstats.read_row_norms(shard, part.n_obs, name)
            np.testing.assert_allclose(norms, np.sqrt((x**2).sum(axis=1)), rtol=1e-5)
    # the norms the blocks collected give tl.score's default (cosine) from the atlas
    monkeypatch.setattr(_rowstats, "compute_row_norms", None)
    frame = sg.Atlas.open(built[300].path).score(sig, mode="cosine")
    monkeypatch.undo()
    for name, part in memory.items():
        sg.tl.score(part, sig, key_added="cosine")
        got = frame.loc[frame["dataset"] == name, "score"].to_numpy()
        np.testing.assert_allclose(got, part.obs["cosine"].to_numpy(), rtol=1e-6)
    sg.tl.score(memory["p0"], sig, mode="classic", key_added="classic")
    assert not np.allclose(memory["p0"].obs["top10"], memory["p0"].obs["classic"])  # top-10 rescales the cells
    # the merge task stored them before sealing: a damaged byte is caught by verify and by score
    atlas = built[300]
    shard = atlas.path / "shards" / atlas._manifest["shards"][1]["dir"]
    chunk = next((shard / "row_stats" / "total").rglob("c/*"))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"Dataset 'p1' is damaged: .*row_stats/total"):
        assert atlas.verify(progress=False) == ["p1"]
    from scsig.atlas import _query

    monkeypatch.setattr(_query, "_CHECKED", set())  # a new process: nothing checked or read yet
    monkeypatch.setattr(_query, "_ROW_FACTORS", type(_query._ROW_FACTORS)())
    with pytest.raises(DamagedDatasetError, match="'p1'"):
        sg.Atlas.open(atlas.path).score(sig, mode="top")
