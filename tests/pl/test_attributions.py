from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes

import scsig as sg
from scsig.pl._attributions import group_attribution_stats
from scsig.pl._utils import group_labels

GENES = ["g0", "g1", "g2", "g3", "g10"]


@pytest.mark.parametrize("kind", ["heatmap", "dotplot"])
def test_gene_attributions_image(scored, check_image, kind):
    fig = sg.pl.gene_attributions(scored, GENES, groupby=["group", "cond"], kind=kind, return_fig=True)
    check_image(f"gene_attributions_{kind}", fig)


def test_group_stats_by_hand(scored):
    groups = group_labels(scored, ["group", "cond"])
    mean, frac = group_attribution_stats(scored, GENES, groups, "attr_ig")
    dense = scored[:, GENES].layers["attr_ig"].toarray()
    for g in groups.cat.categories:
        rows = (groups == g).to_numpy()
        np.testing.assert_allclose(mean.loc[g].to_numpy(), dense[rows].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(frac.loc[g].to_numpy(), (dense[rows] != 0).mean(axis=0))
    assert list(mean.columns) == GENES
    assert list(mean.index) == ["a_ctrl", "a_stim", "b_ctrl", "b_stim"]


def test_heatmap_shows_group_means(scored):
    ax = sg.pl.gene_attributions(scored, GENES, groupby="group", show=False)
    shown = ax.images[0].get_array()
    dense = scored[:, GENES].layers["attr_ig"].toarray()
    a = (scored.obs["group"] == "a").to_numpy()
    np.testing.assert_allclose(shown[0], dense[a].mean(axis=0), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == GENES
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]


def test_dotplot_sizes_follow_fraction(scored):
    # make one gene's attribution zero in half of group a's cells
    x = scored.layers["attr_ig"].tolil()
    col = scored.var_names.get_loc("g3")
    a_cells = np.flatnonzero((scored.obs["group"] == "a").to_numpy())
    for i in a_cells[: len(a_cells) // 2]:
        x[i, col] = 0
    scored.layers["attr_ig"] = x.tocsr()
    ax = sg.pl.gene_attributions(scored, ["g3"], groupby="group", kind="dotplot", largest_dot=100, show=False)
    sizes = ax.collections[0].get_sizes()
    dense = scored.layers["attr_ig"][:, col].toarray().ravel()
    frac_a = (dense[a_cells] != 0).mean()
    frac_b = (dense[(scored.obs["group"] == "b").to_numpy()] != 0).mean()
    assert frac_a < frac_b
    np.testing.assert_allclose(sizes, [100 * frac_a**1.5, 100 * frac_b**1.5])


def test_genes_from_score_key(scored):
    ax = sg.pl.gene_attributions(scored, "score", groupby="group", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == GENES
    with pytest.raises(KeyError, match="neither a list"):
        sg.pl.gene_attributions(scored, "nokey", groupby="group")


def test_genes_from_one_score_column(scored):
    adata = scored.copy()
    sg.tl.score(adata, {"B": ["g0", "g1", "g2"], "T": ["g3", "g10"]}, key_added="two")
    ax = sg.pl.gene_attributions(adata, "two_T", groupby="group", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["g3", "g10"]
    ax = sg.pl.gene_attributions(adata, "two", groupby="group", show=False)  # the whole score: both signatures
    assert [t.get_text() for t in ax.get_xticklabels()] == ["g0", "g1", "g2", "g3", "g10"]
    with pytest.raises(KeyError, match=r"two_B"):  # the error lists the score columns
        sg.pl.gene_attributions(adata, "two_X", groupby="group")
    sg.tl.hits(adata, "two_B")  # a score column is a score for hits too
    assert "two_B_hit" in adata.obs


def test_missing_genes_warn(scored):
    with pytest.warns(UserWarning, match="1 of 3 genes") as record:
        ax = sg.pl.gene_attributions(scored, ["g0", "nope", "g1"], groupby="group", show=False)
    assert [w.filename for w in record if "1 of 3 genes" in str(w.message)] == [__file__]  # points at the caller
    assert [t.get_text() for t in ax.get_xticklabels()] == ["g0", "g1"]
    with pytest.raises(KeyError, match="None of the genes"):
        sg.pl.gene_attributions(scored, ["x", "y"], groupby="group")
    with pytest.raises(ValueError, match="more than once"):
        sg.pl.gene_attributions(scored, ["g0", "g0"], groupby="group")


def test_standard_scale_and_swap(scored):
    ax = sg.pl.gene_attributions(scored, GENES, groupby="group", standard_scale="var", swap_axes=True, show=False)
    shown = ax.images[0].get_array()
    assert shown.shape == (len(GENES), 2)
    np.testing.assert_allclose(shown.max(axis=1), 1.0)
    np.testing.assert_allclose(shown.min(axis=1), 0.0)
    with pytest.raises(ValueError, match="standard_scale"):
        sg.pl.gene_attributions(scored, GENES, groupby="group", standard_scale="cells")


def test_contract(scored, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    _, ax = plt.subplots()
    assert sg.pl.gene_attributions(scored, GENES, groupby="group", kind="dotplot", ax=ax) is ax
    assert isinstance(sg.pl.gene_attributions(scored, GENES, groupby="group", show=False), Axes)
    assert sg.pl.gene_attributions(scored, GENES, groupby="group", show=True) is None
    assert shown == [1]
    with pytest.raises(ValueError, match="kind must be"):
        sg.pl.gene_attributions(scored, GENES, groupby="group", kind="bar")


def test_needs_attribution_layer():
    adata, _ = sg.datasets.toy()
    with pytest.raises(KeyError, match="sg.tl.attribute"):
        sg.pl.gene_attributions(adata, ["g0"], groupby="group")
