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
