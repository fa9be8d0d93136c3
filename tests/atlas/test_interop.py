"""sg.Atlas.from_signature: import the reference tool's published TileDB attribution folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scsig as sg

tiledb = pytest.importorskip("tiledb")

GENES = [f"G{i}" for i in range(12)]


def write_reference_folder(folder, cell_type, dense, *, cell_order="col-major"):
    """Lay out ``<cell type>/attributions`` + ``cell_metadata.csv.gz`` as the published atlases do."""
    sub = folder / cell_type
    sub.mkdir(parents=True)
    n_cells, n_genes = dense.shape
    dom = tiledb.Domain(
        tiledb.Dim(name="x", domain=(0, n_cells - 1), dtype=np.uint32),
        tiledb.Dim(name="y", domain=(0, n_genes - 1), dtype=np.uint32),
    )
    schema = tiledb.ArraySchema(
        domain=dom,
        sparse=True,
        cell_order=cell_order,
        tile_order=cell_order,
        attrs=[tiledb.Attr(name="vals", dtype=np.float32, filters=tiledb.FilterList([tiledb.GzipFilter()]))],
    )
    uri = str(sub / "attributions")
    tiledb.SparseArray.create(uri, schema)
    x, y = np.nonzero(dense)
    with tiledb.open(uri, "w") as arr:
        arr[x.astype(np.uint32), y.astype(np.uint32)] = dense[x, y].astype(np.float32)
    meta = pd.DataFrame(
        {"sample": [f"s{i % 2}" for i in range(n_cells)], "disease": ["healthy"] * (n_cells - 1) + [np.nan]},
        index=pd.Index([f"{cell_type}_{i}" for i in range(n_cells)], name="cell"),
    )
    meta.to_csv(sub / "cell_metadata.csv.gz")
    return sub


def random_attributions(n_cells, n_genes, seed, *, empty_tail=0):
    rng = np.random.default_rng(seed)
    dense = rng.gamma(0.5, 1.0, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.4)
    dense[n_cells - empty_tail :] = 0
    return dense.astype(np.float32)


def test_from_signature_keeps_trailing_empty_cells(tmp_path):
    t_cells = random_attributions(10, len(GENES), 0, empty_tail=2)
    b_cells = random_attributions(7, len(GENES), 1)
    write_reference_folder(tmp_path / "pub", "T cell", t_cells)
    write_reference_folder(tmp_path / "pub", "B cell", b_cells, cell_order="row-major")
    (tmp_path / "pub" / "README.txt").write_text("not a cell type")
    atlas = sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "atlas", gene_order=GENES)
    assert atlas.datasets == ["B cell", "T cell"]
    sig = ["G1", "G3", "G10"]
    frame = atlas.score(sig, mode="classic")  # the reference tool's score
    assert len(frame) == 17
    t = frame[frame["dataset"] == "T cell"]
    assert list(t.index) == [f"T cell_{i}" for i in range(10)]  # all 10 cells, not the 8 the reference returns
    # the reference's query_attributions: mean over the genes of the coo matrix (cells x genes)
    np.testing.assert_allclose(t["score"], t_cells[:, [1, 3, 10]].astype(np.float64).mean(axis=1), rtol=1e-6)
    assert (t["score"].iloc[-2:] == 0).all()
    b = frame[frame["dataset"] == "B cell"]
    np.testing.assert_allclose(b["score"], b_cells[:, [1, 3, 10]].astype(np.float64).mean(axis=1), rtol=1e-6)
    w = [1.0, 2.0, 3.0]
    weighted = atlas.score(sig, weights=w, datasets="T cell", mode="classic")
    np.testing.assert_allclose(weighted["score"], t_cells[:, [1, 3, 10]] @ np.array(w) / 6, rtol=1e-6)
    assert list(frame.columns) == ["dataset", "sample", "disease", "score"]
    assert frame["disease"].isna().sum() == 2
    back = atlas.to_anndata(datasets="T cell")
    np.testing.assert_allclose(back.layers["attr_ig"].toarray(), t_cells)


def test_from_signature_many_gene_ranges(tmp_path, monkeypatch):
    from scsig.atlas import _store, _tiledb

    monkeypatch.setattr(_tiledb, "BLOCK_NNZ", 5)
    monkeypatch.setattr(_store, "SHARD", 8)
    monkeypatch.setattr(_store, "CHUNK", 4)
    dense = random_attributions(9, len(GENES), 3, empty_tail=1)
    write_reference_folder(tmp_path / "pub", "NK", dense)
    atlas = sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "atlas", gene_order=GENES)
    np.testing.assert_allclose(atlas.to_anndata().layers["attr_ig"].toarray(), dense)


def test_from_signature_errors(tmp_path):
    write_reference_folder(tmp_path / "pub", "T", random_attributions(4, len(GENES), 0))
    with pytest.raises(ValueError, match="12 gene positions but gene_order has 5"):
        sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "a1", gene_order=GENES[:5])
    assert not (tmp_path / "a1").exists()  # a failed import leaves no half-made atlas behind
    (tmp_path / "pub2" / "X" / "attributions").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no cell_metadata"):
        sg.Atlas.from_signature(tmp_path / "pub2", tmp_path / "a2", gene_order=GENES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no '<cell type>/attributions'"):
        sg.Atlas.from_signature(tmp_path / "empty", tmp_path / "a3", gene_order=GENES)


def test_imported_atlas_top_score_equals_in_memory_top(tmp_path, monkeypatch):
    """An imported (gene-major) dataset gets its per-cell top-k sums from its stored values at the seal."""
    import json

    from anndata import AnnData
    from scipy import sparse

    from scsig.tl import _score_modes

    monkeypatch.setattr(_score_modes, "DEFAULT_TOP_K", 4)  # the 12-gene cells have more than 4 values
    dense = random_attributions(15, len(GENES), 7, empty_tail=1)
    write_reference_folder(tmp_path / "pub", "NK", dense)
    atlas = sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "atlas", gene_order=GENES)
    entry = json.loads((tmp_path / "atlas" / "manifest.json").read_text())["shards"][0]
    assert entry["row_stats"] == {"top_k": 4, "norms": True}
    sig = ["G1", "G3", "G10"]
    frame = atlas.score(sig, mode="top", mode_kwds={"top_k": 4})
    adata = AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(15)]), var=pd.DataFrame(index=GENES))
    adata.layers["attr_ig"] = sparse.csr_matrix(dense)
    adata.uns["scsig"] = {"layers": {"attr_ig": {}}}
    sg.tl.score(adata, sig, mode="top", mode_kwds={"top_k": 4})
    np.testing.assert_allclose(frame["score"].to_numpy(), adata.obs["score"].to_numpy(), rtol=1e-9)
    assert (dense != 0).sum(1).max() > 4
    # the norms come from the same pass over the stored values: cosine as in memory
    from scsig.atlas import _rowstats

    norms = _rowstats.read_row_norms(tmp_path / "atlas" / "shards" / entry["dir"], 15, entry["name"])
    np.testing.assert_allclose(norms, np.sqrt((np.asarray(dense, dtype=np.float64) ** 2).sum(1)), rtol=1e-6)
    cosine = atlas.score(sig, mode="cosine")
    sg.tl.score(adata, sig, key_added="cosine")
    np.testing.assert_allclose(cosine["score"].to_numpy(), adata.obs["cosine"].to_numpy(), rtol=1e-6)
