"""sg.get.signature: a ranked group's genes as a weighted signature that sg.tl.score and sg.Atlas.score take."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scsig as sg


@pytest.fixture(scope="module")
def ranked():
    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, n_steps=200, progress=False)
    sg.tl.rank_genes_groups(adata, "group")
    return adata, model


def test_signature_is_the_top_positive_genes_weighted_by_group_mean(ranked):
    adata, _ = ranked
    sig = sg.get.signature(adata, "b", n_genes=5)
    df = sc.get.rank_genes_groups_df(adata, "b", key="rank_genes_groups_scsig")
    expected = df[df["scores"] > 0]["names"].head(5).tolist()
    assert list(sig.index) == expected
    x = adata.layers["attr_ig"].toarray()
    b = (adata.obs["group"] == "b").to_numpy()
    np.testing.assert_allclose(sig.to_numpy(), x[b][:, adata.var_names.get_indexer(expected)].mean(0), rtol=1e-5)
    assert sig.dtype == np.float64
    flat = sg.get.signature(adata, "b", n_genes=5, weighted=False)
    assert list(flat.index) == expected
    assert (flat == 1.0).all()


def test_signature_feeds_tl_score(ranked):
    adata, _ = ranked
    adata = adata.copy()
    sig = sg.get.signature(adata, "b", n_genes=8)
    sg.tl.score(adata, sig, mode="classic", key_added="sig")
    sg.tl.score(adata, dict(sig), mode="classic", key_added="by_dict")
    np.testing.assert_allclose(adata.obs["sig"], adata.obs["by_dict"])
    rec = adata.uns["scsig"]["scores"]["sig"]["signatures"]["signature"]
    assert rec["genes"] == list(sig.index)
    np.testing.assert_allclose(rec["weights"], sig.to_numpy())
    sg.tl.score(adata, {"a": sg.get.signature(adata, "a", n_genes=5), "b": sig}, key_added="both")
    assert {"both_a", "both_b"} <= set(adata.obs.columns)
    # the group's own signature scores its cells higher
    assert (
        adata.obs.loc[adata.obs["group"] == "b", "sig"].mean() > adata.obs.loc[adata.obs["group"] == "a", "sig"].mean()
    )


def test_signature_feeds_atlas_score(ranked, tmp_path):
    pytest.importorskip("tensorstore")
    adata, model = ranked
    sig = sg.get.signature(adata, "b", n_genes=8)
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    atlas.add(adata.copy(), name="toy")
    frame = atlas.score(sig, mode="classic")
    scored = sg.tl.score(adata, sig, mode="classic", copy=True)
    np.testing.assert_allclose(frame["score"].to_numpy(), scored.obs["score"].to_numpy(), rtol=1e-6)


def test_signature_bad_input(ranked):
    adata, _ = ranked
    with pytest.raises(KeyError, match="group 'z' is not in the ranking"):
        sg.get.signature(adata, "z")
    with pytest.raises(KeyError, match="Run sg.tl.rank_genes_groups first"):
        sg.get.signature(adata, "b", key="nothing")
    with pytest.raises(ValueError, match="n_genes must be a positive integer"):
        sg.get.signature(adata, "b", n_genes=0)
    with pytest.raises(ValueError, match="No gene of group 'b' has a positive score and pvals_adj < 0"):
        sg.get.signature(adata, "b", pval_cutoff=0)
    few = adata.copy()
    sg.tl.rank_genes_groups(few, "group", n_genes=3, key_added="few")
    with pytest.warns(UserWarning, match="stores 3 genes per group, fewer than n_genes=50"):
        assert len(sg.get.signature(few, "b", key="few")) <= 3
    sc.tl.rank_genes_groups(few, "group", method="t-test", layer="attr_ig")
    with pytest.raises(KeyError, match="pass weighted=False"):
        sg.get.signature(few, "b", key="rank_genes_groups")
    assert isinstance(sg.get.signature(few, "b", key="rank_genes_groups", weighted=False), pd.Series)
