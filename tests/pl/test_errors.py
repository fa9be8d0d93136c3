"""Plots on bad input: clear errors, views left alone."""

from __future__ import annotations

import numpy as np
import pytest

import scsig as sg


@pytest.fixture
def scored_toy(toy):
    adata, model = toy
    sg.tl.attribute(adata, model)
    sg.tl.score(adata, ["g0", "g1", "g2"])
    sg.tl.hits(adata, "score")
    adata.obs["condition"] = np.repeat(["ctrl", "stim"], adata.n_obs // 2)
    return adata


def test_scores_palette_too_short(scored_toy):
    with pytest.raises(ValueError, match="palette has 1 colour"):
        sg.pl.scores(scored_toy, groupby="group", palette=["red"], show=False)


def test_hit_fractions_palette_too_short(scored_toy):
    with pytest.raises(ValueError, match="palette has 1 colour"):
        sg.pl.hit_fractions(scored_toy, "score_hit", x="condition", palette=["red"], show=False)


def test_plots_leave_a_view_alone(scored_toy):
    view = scored_toy[scored_toy.obs["group"] == "a"]
    sg.pl.scores(view, groupby="group", show=False)
    sg.pl.gene_attributions(view, ["g0", "g1"], groupby="group", show=False)
    assert view.is_view


def test_gene_attributions_duplicate_var_names(scored_toy):
    scored_toy.var_names = [*scored_toy.var_names[:-1], scored_toy.var_names[0]]
    with pytest.raises(ValueError, match="var_names_make_unique"):
        sg.pl.gene_attributions(scored_toy, ["g1", "g2"], groupby="group", show=False)


def test_ax_and_metrics_of_the_wrong_kind(scored_toy):
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        sg.pl.scores(scored_toy, "score", ax="ax", show=False)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        sg.pl.gene_attributions(scored_toy, "score", groupby="group", ax=1, show=False)
    res = sg.tl.compare_scores(
        scored_toy, ["g0", "g1", "g2"], contrast="group", positive="b", methods=["attribution", "score_genes"]
    )
    with pytest.raises(ValueError, match="metrics must be a non-empty list"):
        sg.pl.compare_scores(res, metrics=(), show=False)
