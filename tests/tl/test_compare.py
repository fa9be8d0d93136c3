from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, spearmanr

import scsig as sg

GENES = ["g0", "g1", "g2", "g3", "g4"]


@pytest.fixture
def attributed(toy):
    adata, model = toy
    sg.tl.attribute(adata, model)
    adata.obs["celltype"] = np.where(np.arange(adata.n_obs) % 3 == 0, "x", "y")
    return adata


def test_auroc_and_depth_match_scipy(attributed):
    adata = attributed
    res = sg.tl.compare_scores(
        adata,
        GENES,
        contrast="group",
        positive="b",
        groupby="celltype",
        methods=["attribution", "score_genes"],
        min_cells=3,
    )
    assert set(res["group"]) == {"all", "x", "y"}
    sg.tl.score(adata, GENES, key_added="direct")
    np.testing.assert_allclose(adata.obs["compare_attribution"], adata.obs["direct"])
    pos = (adata.obs["group"] == "b").to_numpy()
    s = adata.obs["direct"].to_numpy()
    u = mannwhitneyu(s[pos], s[~pos]).statistic
    row = res[(res.method == "attribution") & (res.group == "all")].iloc[0]
    assert row.auroc == pytest.approx(u / (pos.sum() * (~pos).sum()))
    totals = np.asarray(adata.X.sum(1)).ravel()
    x = (adata.obs["celltype"] == "x").to_numpy()
    rho_x = np.mean([abs(spearmanr(s[x & m], totals[x & m]).statistic) for m in (pos, ~pos)])
    row_x = res[(res.method == "attribution") & (res.group == "x")].iloc[0]
    assert row_x.depth_rho == pytest.approx(rho_x)
    assert row.n_positive == pos.sum()
    # the expression score is scanpy's on log1p(CP10k), and the user's X is untouched
    assert adata.X.dtype == np.int32
    assert "compare" in adata.uns["scsig"]


def test_unknown_labels_and_methods(attributed):
    with pytest.raises(ValueError, match="positive label"):
        sg.tl.compare_scores(attributed, GENES, contrast="group", positive="zzz")
    with pytest.raises(KeyError, match="contrast="):
        sg.tl.compare_scores(attributed, GENES, contrast="nope", positive="b")
    with pytest.raises(ValueError, match="Unknown scoring method"):
        sg.tl.compare_scores(attributed, GENES, contrast="group", positive="b", methods=["magic"])


@pytest.mark.skipif(
    importlib.util.find_spec("pyucell") is None or importlib.util.find_spec("decoupler") is None,
    reason="needs pyucell and decoupler",
)
def test_rank_methods(attributed):
    res = sg.tl.compare_scores(attributed, GENES, contrast="group", positive="b", methods=["ucell", "aucell"])
    assert set(res["method"]) == {"ucell", "aucell"}
    # the toy's group b over-expresses g0..g4, so a rank score separates it
    assert (res["auroc"] > 0.7).all()


def test_signature_unknown_to_model_gives_nan(attributed):
    attributed.var.loc[["g0", "g1"], "attr_ig_in_model"] = False  # as if the model lacked them
    with pytest.warns(UserWarning, match="attribution score not computed"):
        res = sg.tl.compare_scores(
            attributed, ["g0", "g1"], contrast="group", positive="b", methods=["attribution", "score_genes"]
        )
    assert res.loc[res.method == "attribution", "auroc"].isna().all()
    assert res.loc[res.method == "score_genes", "auroc"].notna().all()
