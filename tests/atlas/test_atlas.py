"""sg.Atlas: create / open / add / score / to_anndata, against numpy and sg.tl.score."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import scsig as sg
from scsig.atlas import _store
from scsig.atlas._checks import DamagedDatasetError

from .conftest import synthetic_adata


def _numpy_scores(layer, var_names, genes, weights=None, aggregate="mean"):
    x = np.asarray(sparse.csr_matrix(layer).toarray(), dtype=np.float64)
    cols = [list(var_names).index(g) for g in genes]
    w = np.ones(len(cols)) if weights is None else np.asarray(weights, dtype=np.float64)
    total = x[:, cols] @ w
    return total / w.sum() if aggregate == "mean" else total


def test_create_open_and_describe(tmp_path, genes):
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=genes)
    assert atlas.datasets == []
    assert atlas.n_obs == 0
    assert list(atlas.gene_order) == genes
    assert atlas.gene_order_hash == sg.models.gene_order_hash(genes)
    atlas.add(synthetic_adata(30, genes), name="one")
    again = sg.Atlas.open(tmp_path / "a")
    assert again.datasets == ["one"]
    assert again.n_obs == 30
    assert "1 dataset" in repr(again)
    summary = again.summary()
    assert summary.loc["one", "n_obs"] == 30
    assert summary.loc["one", "nnz"] == synthetic_adata(30, genes).layers["attr_ig"].nnz


def test_create_refuses_bad_targets(tmp_path, genes):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        sg.Atlas.create(tmp_path / "full", gene_order=genes)
    with pytest.raises(ValueError, match="more than once"):
        sg.Atlas.create(tmp_path / "dup", gene_order=["a", "b", "a"])
    with pytest.raises(FileNotFoundError, match="not an scsig atlas"):
        sg.Atlas.open(tmp_path / "nothing")


def test_score_equals_tl_score_and_numpy(tmp_path, attributed_toy):
    adata, model = attributed_toy
    adata = adata.copy()
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=model.gene_order)
    atlas.add(adata, name="toy")
    sig = ["g3", "g0", "g7", "g11"]
    frame = atlas.score(sig, mode="classic")
    sg.tl.score(adata, sig, mode="classic")
    assert list(frame.index) == list(adata.obs_names)
    assert list(frame.columns) == ["dataset", "group", "score"]
    assert frame["score"].dtype == np.float64
    np.testing.assert_allclose(frame["score"].to_numpy(), adata.obs["score"].to_numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(frame["score"], _numpy_scores(adata.layers["attr_ig"], adata.var_names, sig), rtol=1e-6)
    # weighted mean, sum and weighted sum mirror sg.tl.score
    w = [1.0, 2.0, 0.5, 3.0]
    for aggregate in ("mean", "sum"):
        got = atlas.score(sig, weights=w, aggregate=aggregate, mode="classic")["score"]
        sg.tl.score(adata, sig, weights=w, aggregate=aggregate, key_added="ref", mode="classic")
        np.testing.assert_allclose(got.to_numpy(), adata.obs["ref"].to_numpy(), rtol=1e-6, atol=1e-9)
    got = atlas.score(dict(zip(sig, w, strict=True)), aggregate="sum", mode="classic")["score"]
    np.testing.assert_allclose(got, _numpy_scores(adata.layers["attr_ig"], adata.var_names, sig, w, "sum"), rtol=1e-6)
    # the order of the genes does not matter
    np.testing.assert_allclose(atlas.score(sig[::-1], mode="classic")["score"], frame["score"], rtol=1e-12)
    # one default everywhere: the atlas's default score is sg.tl.score's
    default = atlas.score(sig)
    sg.tl.score(adata, sig, key_added="default")
    assert default.attrs["scsig"]["mode"] == adata.uns["scsig"]["scores"]["default"]["mode"] == "cosine"
    np.testing.assert_allclose(default["score"].to_numpy(), adata.obs["default"].to_numpy(), rtol=1e-6, atol=1e-9)


def test_several_signatures_and_key_added(tmp_path, attributed_toy):
    adata, model = attributed_toy
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=model.gene_order)
    atlas.add(adata, name="toy")
    frame = atlas.score({"up": ["g0", "g1"], "down": {"g5": 1.0, "g9": 3.0}}, key_added="s", mode="classic")
    assert list(frame.columns[-2:]) == ["s_up", "s_down"]
    np.testing.assert_allclose(
        frame["s_up"], _numpy_scores(adata.layers["attr_ig"], adata.var_names, ["g0", "g1"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        frame["s_down"], _numpy_scores(adata.layers["attr_ig"], adata.var_names, ["g5", "g9"], [1.0, 3.0]), rtol=1e-6
    )
    assert frame.attrs["scsig"]["signatures"]["down"]["genes"] == ["g5", "g9"]


def test_missing_and_duplicate_genes(tmp_path, attributed_toy):
    adata, model = attributed_toy
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=model.gene_order)
    atlas.add(adata, name="toy")
    with pytest.warns(UserWarning, match=r"1 of 3 genes .* left out: \['NOPE'\]"):
        frame = atlas.score(["g0", "g1", "NOPE"])
    np.testing.assert_allclose(frame["score"], atlas.score(["g0", "g1"])["score"])
    assert frame.attrs["scsig"]["signatures"]["signature"]["missing"] == ["NOPE"]
    with pytest.raises(ValueError, match="more than once"):
        atlas.score(["g0", "g0"])
    with pytest.raises(ValueError, match="None of the 2 genes"):
        atlas.score(["NOPE", "NADA"])
    with pytest.raises(ValueError, match="aggregate"):
        atlas.score(["g0"], aggregate="median")


def test_model_gene_absent_from_dataset_scores_zero(tmp_path, attributed_toy):
    # 'absent1' is in the model's gene order but not in the data: stored as 0, counted in the mean
    adata, model = attributed_toy
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=model.gene_order)
    atlas.add(adata, name="toy")
    both = atlas.score(["g0", "absent1"], mode="classic")["score"]
    np.testing.assert_allclose(both, _numpy_scores(adata.layers["attr_ig"], adata.var_names, ["g0"]) / 2, rtol=1e-6)


def test_several_datasets_obs_columns_filter_and_datasets(tmp_path, genes):
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=genes)
    a1 = synthetic_adata(40, genes, seed=1, prefix="a")
    a2 = synthetic_adata(25, genes, seed=2, prefix="b")
    a3 = synthetic_adata(10, genes, seed=3, prefix="c")
    atlas.add(a1, name="d1")
    atlas.add(a2, name="d2", obs_columns=["sample"])
    atlas.add(a3, name="d3", obs_columns=["cell_type", "depth"], progress=True)
    sig = ["G1", "G4", "G30"]
    frame = atlas.score(sig, progress=True, mode="classic")
    assert len(frame) == 75
    assert list(frame["dataset"].cat.categories) == ["d1", "d2", "d3"]
    assert list(frame.columns) == ["dataset", "cell_type", "sample", "depth", "score"]
    assert isinstance(frame["cell_type"].dtype, pd.CategoricalDtype)
    assert frame.loc[frame["dataset"] == "d2", "cell_type"].isna().all()
    expected = np.concatenate([_numpy_scores(a.layers["attr_ig"], genes, sig) for a in (a1, a2, a3)])
    np.testing.assert_allclose(frame["score"], expected, rtol=1e-6)

    sub = atlas.score(sig, datasets=["d3", "d1"], mode="classic")
    assert sorted(sub["dataset"].unique()) == ["d1", "d3"]
    np.testing.assert_allclose(sub.loc[a3.obs_names, "score"], expected[65:], rtol=1e-6)
    with pytest.raises(KeyError, match="not in the atlas"):
        atlas.score(sig, datasets=["nope"], mode="classic")

    # a query string; datasets without the column contribute nothing
    t_cells = atlas.score(sig, obs_filter="cell_type == 'T'", mode="classic")
    want = list(a1.obs_names[a1.obs["cell_type"] == "T"]) + list(a3.obs_names[a3.obs["cell_type"] == "T"])
    assert list(t_cells.index) == want
    # a dict column -> values, a callable, and the dataset column
    by_dict = atlas.score(sig, obs_filter={"sample": ["s0", "s2"]}, mode="classic")
    assert set(by_dict["dataset"]) == {"d1", "d2"}
    assert set(by_dict["sample"]) == {"s0", "s2"}
    deep = atlas.score(
        sig, obs_filter=lambda obs: obs["depth"] > 500 if "depth" in obs else np.zeros(len(obs), bool), mode="classic"
    )
    assert (deep["depth"] > 500).all()
    assert len(deep) == int((a1.obs["depth"] > 500).sum() + (a3.obs["depth"] > 500).sum())
    assert set(atlas.score(sig, obs_filter="dataset == 'd2'")["dataset"]) == {"d2"}
    with pytest.raises(KeyError, match="no queried dataset"):
        atlas.score(sig, obs_filter="tissue == 'lung'", mode="classic")
    empty = atlas.score(sig, obs_filter={"sample": "s9"}, mode="classic")
    assert len(empty) == 0
    assert "score" in empty
    np.testing.assert_array_equal(atlas.obs().index, frame.index)


def test_add_refusals(tmp_path, attributed_toy, genes):
    adata, model = attributed_toy
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=genes)
    with pytest.raises(ValueError, match=r"attributed with model 'toy'.*expects gene order hash"):
        atlas.add(adata, name="toy")
    stray = synthetic_adata(5, [*genes[:10], "NOT_A_GENE"])
    with pytest.raises(ValueError, match=r"no scsig provenance.*\['NOT_A_GENE'\]"):
        atlas.add(stray, name="stray")
    good = synthetic_adata(5, genes)
    atlas.add(good, name="x")
    with pytest.raises(ValueError, match="already has a dataset named 'x'"):
        atlas.add(good, name="x")
    with pytest.raises(KeyError, match="obs_columns"):
        atlas.add(good, name="y", obs_columns=["nope"])
    clash = good.copy()
    clash.obs["dataset"] = "mine"
    with pytest.raises(ValueError, match="reserved"):
        atlas.add(clash, name="z")
    bad = good.copy()
    bad.layers["attr_ig"].data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        atlas.add(bad, name="nan")
    with pytest.raises(KeyError, match="Layer 'attr_dl' not found"):
        atlas.add(good, name="w", layer="attr_dl")
    assert atlas.datasets == ["x"]
    assert list((tmp_path / "a" / "tmp").iterdir()) == []  # failed writes leave nothing behind


def test_nonzero_outside_model_refused(tmp_path, attributed_toy):
    adata, model = attributed_toy
    bad = adata.copy()
    layer = bad.layers["attr_ig"].tolil()
    outside = np.flatnonzero(~bad.var["attr_ig_in_model"].to_numpy())
    if outside.size == 0:  # the toy model knows every data gene: mark one as unknown
        bad.var.loc[bad.var_names[0], "attr_ig_in_model"] = False
        outside = np.array([0])
    layer[0, outside[0]] = 5.0
    bad.layers["attr_ig"] = layer.tocsr()
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=model.gene_order)
    with pytest.raises(ValueError, match="not genes of the atlas"):
        atlas.add(bad, name="bad")


@pytest.mark.parametrize("kind", ["csr", "csc", "dense", "backed"])
def test_build_paths_agree(tmp_path, genes, monkeypatch, kind):
    # tiny working blocks force several row blocks and gene ranges (the streaming transposition)
    monkeypatch.setattr(_store, "BLOCK_NNZ", 97)
    monkeypatch.setattr("scsig.atlas._build.BLOCK_NNZ", 97)
    monkeypatch.setattr(_store, "SHARD", 64)
    monkeypatch.setattr(_store, "CHUNK", 16)
    monkeypatch.setattr(_store, "GROUP_VALUES", 40)  # a query reads its genes in several groups
    adata = synthetic_adata(57, genes, seed=4)
    # reorder the columns so that the layer's var order differs from the atlas gene order
    adata = adata[:, np.random.default_rng(0).permutation(len(genes))].copy()
    layer = adata.layers["attr_ig"]
    if kind == "csc":
        adata.layers["attr_ig"] = sparse.csc_matrix(layer)
    elif kind == "dense":
        adata.layers["attr_ig"] = layer.toarray()
    elif kind == "backed":
        import zarr

        group = zarr.open_group(str(tmp_path / "layer.zarr"), mode="w")
        ad.io.write_elem(group, "x", layer)
        adata.layers["attr_ig"] = ad.io.sparse_dataset(group["x"])
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=genes)
    atlas.add(adata, name="d")
    full = atlas.to_anndata()
    np.testing.assert_allclose(full[:, adata.var_names].layers["attr_ig"].toarray(), layer.toarray(), rtol=1e-7)
    frame = atlas.score(genes[::3], mode="classic")
    np.testing.assert_allclose(frame["score"], _numpy_scores(layer, adata.var_names, genes[::3]), rtol=1e-6)


def test_to_anndata_round_trip(tmp_path, attributed_toy):
    adata, model = attributed_toy
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=model.gene_order)
    atlas.add(adata, name="one")
    atlas.add(adata[:20].copy(), name="two")
    sub = atlas.to_anndata(["g2", "g5", "g8"], obs_filter="group == 'b'")
    assert sub.shape == (int((adata.obs["group"] == "b").sum()), 3)
    assert list(sub.var_names) == sorted(["g2", "g5", "g8"], key=list(model.gene_order).index)
    assert set(sub.obs["dataset"]) == {"one"}
    assert sub.uns["scsig"]["layers"]["attr_ig"]["gene_order_hash"] == model.gene_order_hash
    want = adata[adata.obs["group"] == "b", sub.var_names].layers["attr_ig"].toarray()
    np.testing.assert_allclose(sub.layers["attr_ig"].toarray(), want)
    # sg.tl.score on the subset gives the atlas's scores
    sg.tl.score(sub, ["g2", "g5", "g8"], mode="classic")
    np.testing.assert_allclose(
        sub.obs["score"], atlas.score(["g2", "g5", "g8"], obs_filter="group == 'b'", mode="classic")["score"], rtol=1e-6
    )
    both = atlas.to_anndata(["g0"])
    assert both.n_obs == adata.n_obs + 20
    sub.write_h5ad(tmp_path / "sub.h5ad")


def test_shard_is_an_anndata_zarr_store(tmp_path, attributed_toy):
    adata, model = attributed_toy
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=model.gene_order)
    atlas.add(adata, name="toy")
    (shard,) = (tmp_path / "a" / "shards").iterdir()
    back = ad.read_zarr(shard)
    assert back.shape == (adata.n_obs, model.n_genes)
    assert back.layers["attr_ig"].format == "csc"
    np.testing.assert_allclose(back[:, adata.var_names].layers["attr_ig"].toarray(), adata.layers["attr_ig"].toarray())
    assert back.uns["scsig"]["layers"]["attr_ig"]["gene_order_hash"] == model.gene_order_hash
    pd.testing.assert_frame_equal(back.obs, adata.obs)


def _wide_layer(n_obs=70, n_genes=700, seed=0):
    """Rows summing to 1,000 with 350-650 non-zero genes (some cells at most 300), as a CSR float32 layer."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_obs, n_genes), dtype=np.float64)
    for i in range(n_obs):
        n = rng.integers(350, 650) if i % 4 else rng.integers(20, 300)
        x[i, rng.choice(n_genes, size=n, replace=False)] = rng.gamma(0.6, 1.0, size=n) + 0.001
    x = x / x.sum(1, keepdims=True) * 1000
    return sparse.csr_matrix(x.astype(np.float32))


def _wide_adata(genes, seed=0):
    adata = AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(70)]), var=pd.DataFrame(index=genes))
    adata.layers["attr_ig"] = _wide_layer(n_genes=len(genes), seed=seed)
    return adata


def test_top_score_equals_in_memory_top(tmp_path, monkeypatch):
    """The atlas's "top" score is sg.tl.score's on the same layer, from sums stored at add time."""
    from scsig.atlas import _rowstats

    genes = [f"G{i}" for i in range(700)]
    adata = _wide_adata(genes)
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=genes)
    monkeypatch.setattr(_rowstats, "compute_row_stats", None)  # collected during the build, then read back
    atlas.add(adata, name="d")
    entry = json.loads((tmp_path / "a" / "manifest.json").read_text())["shards"][0]
    assert entry["row_stats"] == {"top_k": 300, "norms": True}
    sig = {"G3": 1.0, "G100": 2.0, "G250": 0.5, "G699": 1.0}
    assert atlas.score(sig).attrs["scsig"]["mode"] == "cosine"  # the atlas's default is sg.tl.score's
    frame = atlas.score(sig, mode="top")
    assert frame.attrs["scsig"]["mode"] == "top"
    monkeypatch.undo()
    ref = adata.copy()
    ref.uns["scsig"] = {"layers": {"attr_ig": {}}}
    sg.tl.score(ref, sig, mode="top")
    np.testing.assert_allclose(frame["score"].to_numpy(), ref.obs["score"].to_numpy(), rtol=1e-9)
    sg.tl.score(ref, sig, mode="classic", key_added="classic")
    assert not np.allclose(frame["score"], ref.obs["classic"])  # the wide cells are rescaled
    # another top_k is computed from the shard's values, in several cell blocks when memory is short
    monkeypatch.setattr(_rowstats, "ROW_STATS_BYTES", 4 * 50 * 17)
    got = atlas.score(sig, mode="top", mode_kwds={"top_k": 50})["score"]
    sg.tl.score(ref, sig, mode="top", mode_kwds={"top_k": 50}, key_added="k50")
    np.testing.assert_allclose(got.to_numpy(), ref.obs["k50"].to_numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="mode must be one of"):
        atlas.score(sig, mode="rank")
    # the row-block build (a layer larger than one block) collects the same sums
    from scsig.atlas import _build

    monkeypatch.setattr(_build, "BLOCK_NNZ", 5000)
    monkeypatch.setattr(_rowstats, "compute_row_stats", None)  # collected during the build, not read back
    atlas.add(adata, name="blocks")
    monkeypatch.undo()
    blocks = atlas.score(sig, mode="top", datasets="blocks")
    np.testing.assert_allclose(blocks["score"].to_numpy(), ref.obs["score"].to_numpy(), rtol=1e-9)


def test_cosine_score_equals_in_memory_cosine(tmp_path, monkeypatch):
    """The atlas's "cosine" score is sg.tl.score's default on each dataset's whole layer."""
    from scsig.atlas import _rowstats

    genes = [f"G{i}" for i in range(700)]
    first, second = _wide_adata(genes), _wide_adata(genes, seed=1)
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=genes)
    atlas.add(first, name="d1")
    atlas.add(second, name="d2")
    sigs = {"one": {"G3": 1.0, "G100": 2.0, "G250": 0.5, "G699": 1.0}, "two": ["G5", "G6"]}
    monkeypatch.setattr(_rowstats, "compute_row_norms", None)  # stored at add time, read back
    frame = atlas.score(sigs, mode="cosine")
    monkeypatch.undo()
    assert frame.attrs["scsig"]["mode"] == "cosine"
    for name, adata in (("d1", first), ("d2", second)):
        ref = adata.copy()
        ref.uns["scsig"] = {"layers": {"attr_ig": {}}}
        sg.tl.score(ref, sigs)
        assert ref.uns["scsig"]["scores"]["score"]["mode"] == "cosine"
        got = frame[frame["dataset"] == name]
        for sig in sigs:
            np.testing.assert_allclose(got[f"score_{sig}"].to_numpy(), ref.obs[f"score_{sig}"].to_numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="do not apply to mode='cosine'"):
        atlas.score(sigs, mode="cosine", mode_kwds={"top_k": 5})
    # a dataset added by an older scsig (no stored norms): computed from its values, same scores
    monkeypatch.setattr(_rowstats, "write_row_stats", lambda *a, **k: None)
    atlas.add(first, name="old")
    monkeypatch.undo()
    old = sg.Atlas.open(tmp_path / "a").score(sigs, mode="cosine", datasets="old")
    np.testing.assert_allclose(
        old["score_one"].to_numpy(), frame[frame["dataset"] == "d1"]["score_one"].to_numpy(), rtol=1e-9
    )
    # the norms are kept for the process: a second query does not compute them again
    monkeypatch.setattr(_rowstats, "compute_row_norms", None)
    again = sg.Atlas.open(tmp_path / "a").score(sigs, mode="cosine", datasets="old")
    np.testing.assert_array_equal(again["score_one"].to_numpy(), old["score_one"].to_numpy())
    assert atlas.verify(progress=False) == []


def test_top_score_of_a_shard_without_stored_sums(tmp_path, monkeypatch):
    """Datasets added before the sums were stored: computed from the values, with a warning, same scores."""
    from scsig.atlas import _rowstats

    genes = [f"G{i}" for i in range(700)]
    adata = _wide_adata(genes, seed=3)
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=genes)
    monkeypatch.setattr(_rowstats, "write_row_stats", lambda *a, **k: None)  # as an older scsig wrote shards
    atlas.add(adata, name="old")
    monkeypatch.undo()
    entry = json.loads((tmp_path / "a" / "manifest.json").read_text())["shards"][0]
    assert entry.get("row_stats") is None
    sig = ["G5", "G50", "G500"]
    with pytest.warns(UserWarning, match="stores no per-cell top-300 sums"):
        frame = sg.Atlas.open(tmp_path / "a").score(sig, mode="top")
    ref = adata.copy()
    ref.uns["scsig"] = {"layers": {"attr_ig": {}}}
    sg.tl.score(ref, sig, mode="top")
    np.testing.assert_allclose(frame["score"].to_numpy(), ref.obs["score"].to_numpy(), rtol=1e-9)
    assert atlas.verify(progress=False) == []


def test_stored_sums_are_checksummed(tmp_path):
    genes = [f"G{i}" for i in range(700)]
    atlas = sg.Atlas.create(tmp_path / "a", gene_order=genes)
    atlas.add(_wide_adata(genes), name="d")
    (shard,) = (tmp_path / "a" / "shards").iterdir()
    chunk = next((shard / "row_stats" / "top").rglob("c/*"))
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"Dataset 'd' is damaged: .*row_stats/top"):
        assert atlas.verify(progress=False) == ["d"]
    with pytest.raises(DamagedDatasetError, match="'d'"):
        sg.Atlas.open(tmp_path / "a").score(["G1", "G2"])
