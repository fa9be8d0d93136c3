"""Atlas.attribute: streaming attribution straight into shards, equal to sg.tl.attribute + Atlas.add."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scsig as sg
from scsig.atlas import _build, _staging, _store, _stream


def _files(adata, tmp_path, cuts=(0, 25, 60)):
    paths = []
    for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        paths.append(tmp_path / f"part{k}.h5ad")
        adata[lo:hi].copy().write_h5ad(paths[-1])
    return paths


def _reference_atlas(path, adata, model, cuts, names, **options):
    """The in-memory path: sg.tl.attribute on each part, then Atlas.add."""
    atlas = sg.Atlas.create(path, gene_order=model.gene_order)
    for name, lo, hi in zip(names, cuts[:-1], cuts[1:], strict=True):
        part = adata[lo:hi].copy()
        sg.tl.attribute(part, model, **options)
        atlas.add(part, name=name, layer=options.get("key_added", "attr_ig"))
    return atlas


def _assert_same(a, b):
    assert a.datasets == b.datasets
    x, y = a.to_anndata(), b.to_anndata()
    pd.testing.assert_frame_equal(x.obs, y.obs)
    layer = next(iter(x.layers))
    assert (x.layers[layer] != y.layers[layer]).nnz == 0  # identical values, not just close


@pytest.mark.parametrize("engine", ["fast", "captum"])
def test_attribute_equals_in_memory_path(toy, tmp_path, engine):
    adata, model = toy
    paths = _files(adata, tmp_path)
    # the same batches: captum's float32 sums depend on a batch's composition (the fast engine's do not)
    want = _reference_atlas(
        tmp_path / "ref", adata, model, (0, 25, 60), ["part0", "part1"], engine=engine, batch_size=7, n_steps=10
    )
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    report = atlas.attribute([str(p) for p in paths], model, engine=engine, batch_size=7, n_steps=10)
    assert report["status"].tolist() == ["added", "added"]
    assert report["n_obs"].tolist() == [25, 35]
    _assert_same(atlas, want)
    prov = atlas.summary()
    assert prov["method"].tolist() == ["ig", "ig"]
    assert atlas._manifest["shards"][0]["provenance"]["engine"] == engine
    # the sources are untouched
    assert "attr_ig" not in ad.read_h5ad(paths[0]).layers


def test_attribute_streams_in_blocks(toy, tmp_path, monkeypatch):
    """Small block and shard sizes: many row blocks merged through scratch files, same values."""
    adata, model = toy
    adata = ad.concat([adata] * 4, index_unique="-")
    monkeypatch.setattr(_stream, "BLOCK_NNZ", 150)
    monkeypatch.setattr(_store, "BLOCK_NNZ", 150)
    monkeypatch.setattr(_store, "SHARD", 64)
    monkeypatch.setattr(_store, "CHUNK", 16)
    seen = []
    grouped = _build._grouped

    def spy(batches, budget):
        for block in grouped(batches, budget):
            seen.append(block[2].size)
            yield block

    monkeypatch.setattr(_stream, "_grouped", spy)
    path = tmp_path / "all.h5ad"
    adata.write_h5ad(path)
    want = _reference_atlas(tmp_path / "ref", adata, model, (0, 240), ["all"], method="ig", n_steps=20)
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    atlas.attribute(ad.read_h5ad(path, backed="r"), model, names="all", batch_size=9, n_steps=20)
    _assert_same(atlas, want)
    assert len(seen) > 5
    assert max(seen) < 150 + 9 * model.n_genes  # a block holds the budget plus at most one batch


def test_grouped_blocks():
    rng = np.random.default_rng(0)
    batches = [sparse.random(5, 30, density=0.3, format="csr", random_state=rng, dtype=np.float32) for _ in range(9)]
    blocks = list(_build._grouped(iter(batches), 100))
    whole = sparse.vstack(batches, format="csr")
    got = sparse.vstack([sparse.csr_matrix((d, i, p), shape=(p.size - 1, 30)) for p, i, d in blocks], format="csr")
    assert (got != whole).nnz == 0
    assert all(d.size >= 100 for _, _, d in blocks[:-1])


def test_failure_is_isolated_and_rerun_skips(toy, tmp_path):
    adata, model = toy
    good = _files(adata, tmp_path)
    bad = adata[:10].copy()
    bad.X = bad.X.copy()
    bad.X.data[3] = -1.0  # not counts: this dataset fails
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    with pytest.warns(UserWarning, match="1 of 3 datasets failed"):
        report = atlas.attribute([good[0], bad, good[1]], model, names=["a", "bad", "b"], on_error="warn")
    assert report["status"].tolist() == ["added", "failed", "added"]
    assert "negative" in report.loc["bad", "error"]
    assert atlas.datasets == ["a", "b"]
    assert list((atlas.path / "tmp").iterdir()) == []  # the failed build left nothing
    assert len(list((atlas.path / "shards").iterdir())) == 2
    before = atlas.score(["g0", "g1"])
    with pytest.raises(RuntimeError, match=r"'bad'.*rerun the same call"):
        atlas.attribute([good[0], bad, good[1]], model, names=["a", "bad", "b"])
    bad.X.data[3] = 1.0
    report = atlas.attribute([good[0], bad, good[1]], model, names=["a", "bad", "b"])
    assert report["status"].tolist() == ["skipped", "added", "skipped"]
    assert atlas.datasets == ["a", "b", "bad"]
    after = atlas.score(["g0", "g1"])
    np.testing.assert_array_equal(after.loc[after["dataset"] != "bad", "score"], before["score"])


def test_attribute_argument_errors(toy, tmp_path):
    adata, model = toy
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    with pytest.raises(TypeError, match="Unknown attribution options.*copy"):
        atlas.attribute(adata, model, names="x", copy=True)
    with pytest.raises(ValueError, match="pass names="):
        atlas.attribute([adata], model)
    with pytest.raises(ValueError, match="more than one source"):
        atlas.attribute([adata, adata], model, names=["x", "x"])
    with pytest.raises(ValueError, match="one name per source"):
        atlas.attribute([adata, adata], model, names=["x"])
    with pytest.raises(ValueError, match="n_steps"):
        atlas.attribute(adata, model, names="x", n_steps=0)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        atlas.attribute(tmp_path / "missing.h5ad", model)
    other = sg.Atlas.create(tmp_path / "other", gene_order=[f"x{i}" for i in range(5)])
    with pytest.raises(ValueError, match="gene order hash"):
        other.attribute(adata, model, names="x")
    assert atlas.datasets == []
    assert other.datasets == []


def test_live_builds_survive_cleaning(tmp_path, genes):
    from .conftest import synthetic_adata

    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    dead = atlas.path / "tmp" / ("d" * 32)  # named as scsig names its staging folders
    dead.mkdir()
    (dead / _staging.BUILD_LOCK).touch()  # a build whose writer died: its lock is free
    with _staging.staging(atlas.path) as live:
        (live / "part").write_text("being built")
        atlas.add(synthetic_adata(5, genes), name="other")  # commits, and cleans leftovers meanwhile
        assert (live / "part").exists()
        assert not dead.exists()
    assert list((atlas.path / "tmp").iterdir()) == []
    assert atlas.datasets == ["other"]


def test_attribute_dask_backed(toy, tmp_path):
    da = pytest.importorskip("dask.array")
    adata, model = toy
    want = _reference_atlas(tmp_path / "ref", adata, model, (0, 60), ["d"], batch_size=16)
    lazy = adata.copy()
    lazy.X = da.from_array(adata.X.toarray(), chunks=(16, -1))
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    atlas.attribute(lazy, model, names="d", batch_size=16)
    _assert_same(atlas, want)
