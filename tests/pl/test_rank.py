"""sg.pl.rank_genes_groups_vs_expression: ranks drawn where they are, scanpy's stored result reused, adata untouched."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scsig as sg


@pytest.fixture(scope="module")
def ranked():
    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, n_steps=200, progress=False)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sg.tl.rank_genes_groups(adata, "group")
    return adata


def _points(ax):
    return {tuple(np.round(p, 6)) for p in ax.collections[0].get_offsets()}


def test_points_are_the_two_ranks(ranked):
    adata = ranked.copy()
    ax = sg.pl.rank_genes_groups_vs_expression(adata, "b", n_labels=3, show=False)
    attr = sc.get.rank_genes_groups_df(adata, "b", key="rank_genes_groups_scsig")["names"].tolist()
    sc.tl.rank_genes_groups(adata, "group", method="wilcoxon", use_raw=False)
    expr = sc.get.rank_genes_groups_df(adata, "b")["names"].tolist()
    expected = {(expr.index(g) + 1.0, attr.index(g) + 1.0) for g in attr}
    assert _points(ax) == expected
    assert [t.get_text() for t in ax.texts] == attr[:3]
    assert "Spearman" in ax.get_title()
    assert "rank_genes_groups" not in ranked.uns  # computed without writing into adata
    # a stored scanpy result with the same groupby and reference is used as it is
    adata.uns["rank_genes_groups"]["names"] = adata.uns["rank_genes_groups"]["names"][::-1].copy()
    ax2 = sg.pl.rank_genes_groups_vs_expression(adata, "b", show=False)
    assert "adata.uns['rank_genes_groups']" in ax2.get_xlabel()
    expr_rev = expr[::-1]
    assert _points(ax2) == {(expr_rev.index(g) + 1.0, attr.index(g) + 1.0) for g in attr}
    plt.close("all")


def test_scanpy_plot_conventions(ranked, tmp_path):
    fig = sg.pl.rank_genes_groups_vs_expression(ranked, "a", return_fig=True)
    assert isinstance(fig, plt.Figure)
    _, ax = plt.subplots()
    assert sg.pl.rank_genes_groups_vs_expression(ranked, "a", ax=ax, show=True) is ax
    target = tmp_path / "sub" / "vs.png"
    sg.pl.rank_genes_groups_vs_expression(ranked, "a", save=target, show=False)
    assert target.is_file()
    mudata = pytest.importorskip("mudata")
    mudata.set_options(pull_on_update=False)
    mdata = mudata.MuData({"gex": ranked.copy()})
    assert sg.pl.rank_genes_groups_vs_expression(mdata, "a", mod="gex", show=False) is not None
    plt.close("all")


def test_image(ranked, check_image):
    fig = sg.pl.rank_genes_groups_vs_expression(ranked, "b", n_labels=5, return_fig=True)
    check_image("rank_genes_groups_vs_expression", fig)


def test_bad_input(ranked):
    with pytest.raises(KeyError, match="group 'z' is not in the ranking"):
        sg.pl.rank_genes_groups_vs_expression(ranked, "z", show=False)
    with pytest.raises(KeyError, match="Run sg.tl.rank_genes_groups first"):
        sg.pl.rank_genes_groups_vs_expression(ranked, "b", key="none", show=False)
    with pytest.raises(KeyError, match="expression_layer='counts' is not in adata.layers"):
        sg.pl.rank_genes_groups_vs_expression(ranked, "b", expression_layer="counts", show=False)
    with pytest.raises(ValueError, match="n_labels must be a non-negative integer"):
        sg.pl.rank_genes_groups_vs_expression(ranked, "b", n_labels=-1, show=False)
    assert isinstance(ranked.uns["rank_genes_groups_scsig"]["pts"], pd.DataFrame)


def test_genes_without_attributions_left_out(ranked):
    # genes with no attribution in any cell (e.g. not in the model) tie at score 0; their order is arbitrary, so
    # they are not drawn, and ranks count the genes drawn
    adata = ranked.copy()
    dead = list(adata.var_names[[1, 4, 7]])
    x = adata.layers["attr_ig"].toarray()
    x[:, [1, 4, 7]] = 0
    adata.layers["attr_ig"] = type(ranked.layers["attr_ig"])(x)
    sg.tl.rank_genes_groups(adata, "group")
    ax = sg.pl.rank_genes_groups_vs_expression(adata, "b", show=False)
    attr = [g for g in sc.get.rank_genes_groups_df(adata, "b", key="rank_genes_groups_scsig")["names"] if g not in dead]
    tmp = adata.copy()
    sc.tl.rank_genes_groups(tmp, "group", method="wilcoxon", use_raw=False)
    expr = [g for g in sc.get.rank_genes_groups_df(tmp, "b")["names"] if g not in dead]
    assert _points(ax) == {(expr.index(g) + 1.0, attr.index(g) + 1.0) for g in attr}
    assert f"{adata.n_vars - len(dead)} genes" in ax.get_title()
    plt.close("all")


def test_log_axes_by_default(ranked):
    ax = sg.pl.rank_genes_groups_vs_expression(ranked, "b", show=False)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # rank 1 at the top
    ax = sg.pl.rank_genes_groups_vs_expression(ranked, "b", log=False, show=False)
    assert ax.get_xscale() == ax.get_yscale() == "linear"
    plt.close("all")
