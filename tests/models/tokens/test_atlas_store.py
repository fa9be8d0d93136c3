"""Token models on the on-disk paths: ``sg.tl.attribute(store=)`` and ``sg.Atlas.attribute`` (scGPT layout)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import scsig as sg

if TYPE_CHECKING:
    from pathlib import Path

pytest.importorskip("tensorstore")

N_GENES, N_CELLS, TAKES = 30, 14, 15  # max_seq_len 16: 15 genes fit beside <cls>


def _adata(genes: list[str], seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.8, 2.0, size=(N_CELLS, len(genes)))).astype(np.float32)
    obs = pd.DataFrame({"group": pd.Categorical(["a", "b"] * (N_CELLS // 2))}, index=[f"c{i}" for i in range(N_CELLS)])
    return AnnData(X=sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture
def token_model(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "scgpt", n_genes=N_GENES, max_seq_len=TAKES + 1)
    return sg.models.load(tmp_path / "scgpt")


def _expected_dropped(adata: AnnData) -> np.ndarray:
    expressed = np.asarray((adata.X > 0).sum(axis=1)).ravel()
    return np.maximum(expressed - TAKES, 0)


def _in_memory(adata: AnnData, model, **options) -> AnnData:
    ref = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the dropped-genes warning, checked elsewhere
        sg.tl.attribute(ref, model, progress=False, **options)
    return ref


def test_store_equals_in_memory_and_keeps_the_dropped_counts(tmp_path, token_model):
    adata = _adata(token_model.gene_order)
    want = _expected_dropped(adata)
    assert want.any()
    assert not want.all()
    ref = _in_memory(adata, token_model, n_steps=48, batch_size=5)
    with pytest.warns(UserWarning, match=rf"{int((want > 0).sum())} of {N_CELLS} cells express more"):
        sg.tl.attribute(adata, token_model, n_steps=48, batch_size=5, store=tmp_path / "attr.h5ad", progress=False)
    np.testing.assert_array_equal(adata.obs["attr_ig_n_genes_dropped"], want)
    np.testing.assert_array_equal(adata.layers["attr_ig"][:].toarray(), ref.layers["attr_ig"].toarray())
    stored = ad.read_h5ad(tmp_path / "attr.h5ad")
    np.testing.assert_array_equal(stored.layers["attr_ig"].toarray(), ref.layers["attr_ig"].toarray())
    # the file holds the per-cell counts too, and the same provenance
    np.testing.assert_array_equal(stored.obs["attr_ig_n_genes_dropped"], want)
    record = stored.uns["scsig"]["layers"]["attr_ig"]
    assert record["engine"] == "tokens"
    assert record["genes_dropped"]["total"] == int(want.sum())
    assert record["genes_dropped"]["n_cells"] == int((want > 0).sum())
    assert record["genes_dropped"]["max"] == int(want.max())
    assert record["genes_dropped"]["obs_key"] == "attr_ig_n_genes_dropped"


def _atlas_from_memory(path: Path, parts: list[AnnData], names: list[str], model, **options):
    atlas = sg.Atlas.create(path, gene_order=model.gene_order)
    for part, name in zip(parts, names, strict=True):
        atlas.add(_in_memory(part, model, **options), name=name, layer="attr_ig", progress=False)
    return atlas


def test_atlas_attribute_equals_in_memory_path_with_the_dropped_counts(tmp_path, token_model):
    adata = _adata(token_model.gene_order, seed=1)
    parts = [adata[:6].copy(), adata[6:].copy()]
    paths = []
    for k, part in enumerate(parts):
        paths.append(str(tmp_path / f"part{k}.h5ad"))
        part.write_h5ad(paths[-1])
    options = {"n_steps": 48, "batch_size": 4}
    want = _atlas_from_memory(tmp_path / "ref", parts, ["part0", "part1"], token_model, **options)
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=token_model.gene_order)
    with pytest.warns(UserWarning, match="express more of the model's genes than it takes in 2 dataset") as caught:
        report = atlas.attribute(paths, token_model, progress=False, **options)
    assert sum("express more" in str(w.message) for w in caught) == 1  # one warning per call, naming both
    assert report["status"].tolist() == ["added", "added"]
    got, ref = atlas.to_anndata(), want.to_anndata()
    assert (got.layers["attr_ig"] != ref.layers["attr_ig"]).nnz == 0  # the same values
    pd.testing.assert_frame_equal(got.obs, ref.obs)  # including attr_ig_n_genes_dropped
    dropped = np.concatenate([_expected_dropped(p) for p in parts])
    np.testing.assert_array_equal(got.obs["attr_ig_n_genes_dropped"], dropped)
    for shard, part in zip(atlas._manifest["shards"], parts, strict=True):
        record = shard["provenance"]
        assert record["engine"] == "tokens"
        assert record["genes_dropped"]["total"] == int(_expected_dropped(part).sum())


def test_atlas_attribute_in_blocks_on_a_cluster_merges_the_dropped_counts(tmp_path, token_model):
    distributed = pytest.importorskip("distributed")
    adata = _adata(token_model.gene_order, seed=2)
    path = str(tmp_path / "all.h5ad")
    adata.write_h5ad(path)
    options = {"n_steps": 48, "batch_size": 3}
    want = _atlas_from_memory(tmp_path / "ref", [adata], ["all"], token_model, **options)
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=token_model.gene_order)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
        pytest.warns(UserWarning, match=r"in 1 dataset\(s\) \('all': \d+ of 14 cells") as caught,
    ):
        report = atlas.attribute([path], token_model, client=client, cells_per_task=6, progress=False, **options)
    assert sum("express more" in str(w.message) for w in caught) == 1  # once, in this process
    assert report["status"].tolist() == ["added"]
    got, ref = atlas.to_anndata(), want.to_anndata()
    assert (got.layers["attr_ig"] != ref.layers["attr_ig"]).nnz == 0
    pd.testing.assert_frame_equal(got.obs, ref.obs)
    want_dropped = _expected_dropped(adata)
    record = atlas._manifest["shards"][0]["provenance"]
    assert record["genes_dropped"] == want._manifest["shards"][0]["provenance"]["genes_dropped"]
    assert record["genes_dropped"]["total"] == int(want_dropped.sum())


def test_the_warning_and_record_say_which_genes_the_crop_kept(tmp_path, scfoundation_folder):
    from scsig.models._scfoundation import load_scfoundation

    genes = scfoundation_folder(tmp_path / "f", n_genes=N_GENES)
    adata = _adata(genes, seed=3)
    want = np.maximum(np.asarray((adata.X > 0).sum(axis=1)).ravel() - 10, 0)
    assert want.any()
    first = load_scfoundation(tmp_path / "f", crop="first_512", max_genes=10)  # the reference tool's rule, 10 genes
    with pytest.warns(UserWarning, match="their first genes in the model's gene order were kept"):
        sg.tl.attribute(adata, first, n_steps=48, progress=False)
    record = adata.uns["scsig"]["layers"]["attr_ig"]["genes_dropped"]
    assert record["kept"] == "first"
    np.testing.assert_array_equal(adata.obs["attr_ig_n_genes_dropped"], want)
    top = load_scfoundation(tmp_path / "f", max_genes=10)
    with pytest.warns(UserWarning, match="their most expressed genes were kept"):
        sg.tl.attribute(adata, top, n_steps=48, key_added="top", progress=False)
    assert adata.uns["scsig"]["layers"]["top"]["genes_dropped"]["kept"] == "most_expressed"
