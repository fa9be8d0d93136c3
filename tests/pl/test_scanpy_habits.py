"""Plots follow scanpy's habits: save=, MuData with mod=, gene groups, no groupby, clear errors for scanpy options."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import scsig as sg


@pytest.fixture
def figdir(tmp_path):
    before = (sc.settings.figdir, sc.settings.file_format_figs)
    sc.settings.figdir, sc.settings.file_format_figs = tmp_path / "figures", "png"
    yield tmp_path / "figures"
    sc.settings.figdir, sc.settings.file_format_figs = before


def _plots(adata):
    sg.tl.hits(adata, "score", key_added="score_hit")
    sg.tl.compare_scores(adata, ["g0", "g1", "g2"], contrast="cond", positive="stim", methods=["attribution"])
    return {
        "scores": lambda **kw: sg.pl.scores(adata, "score", groupby="group", **kw),
        "hit_fractions": lambda **kw: sg.pl.hit_fractions(adata, "score_hit", x="cond", sample_key="sample", **kw),
        "gene_attributions": lambda **kw: sg.pl.gene_attributions(adata, "score", groupby="group", **kw),
        "compare_scores": lambda **kw: sg.pl.compare_scores(adata, **kw),
    }


def test_save_like_scanpy(scored, figdir, tmp_path):
    for name, plot in _plots(scored).items():
        plot(save=True, show=False)
        assert (figdir / f"{name}.png").is_file()
        plot(save="_ifn.pdf", show=False)
        assert (figdir / f"{name}_ifn.pdf").is_file()
        plot(save="_plain", show=False)
        assert (figdir / f"{name}_plain.png").is_file()
        target = tmp_path / "new" / "deeper" / f"{name}.svg"
        plot(save=target, show=False)
        assert target.is_file()
        plot(save=str(tmp_path / "str" / f"{name}.png"), show=False)
        assert (tmp_path / "str" / f"{name}.png").is_file()
        plt.close("all")


def test_mudata_everywhere(scored):
    mudata = pytest.importorskip("mudata")
    mudata.set_options(pull_on_update=False)
    mdata = mudata.MuData({"gex": scored})
    sg.tl.hits(mdata, "score", mod="gex")
    sg.tl.compare_scores(mdata, ["g0", "g1"], contrast="cond", positive="stim", methods=["attribution"], mod="gex")
    assert sg.pl.scores(mdata, "score", groupby="group", mod="gex", show=False) is not None
    assert sg.pl.hit_fractions(mdata, "score_hit", x="cond", sample_key="sample", mod="gex", show=False) is not None
    assert sg.pl.gene_attributions(mdata, "score", groupby="group", mod="gex", show=False) is not None
    assert sg.pl.compare_scores(mdata, mod="gex", show=False) is not None
    frame = sg.get.hit_fractions(mdata, "score_hit", groupby="cond", mod="gex")
    pd.testing.assert_frame_equal(frame, sg.get.hit_fractions(scored, "score_hit", groupby="cond"))
    assert len(sg.get.hit_thresholds(mdata, "score_hit", mod="gex")) == 1
    for call in (
        lambda: sg.pl.hit_fractions(mdata, "score_hit", x="cond", show=False),
        lambda: sg.pl.compare_scores(mdata, show=False),
        lambda: sg.get.hit_thresholds(mdata, "score_hit"),
    ):
        with pytest.raises(KeyError, match="has no modality 'rna'.*mod="):
            call()


def test_gene_groups_as_a_dict(scored):
    ax = sg.pl.gene_attributions(
        scored, {"first": ["g0", "g1"], "second": ["g2", "g1", "g3"]}, groupby="group", kind="dotplot", show=False
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["g0", "g1", "g2", "g3"]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["first", "second"]
    sg.tl.score(scored, {"a": ["g0", "g1"], "b": ["g4"]}, key_added="two")
    ax = sg.pl.gene_attributions(scored, "two", groupby="group", show=False)
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["g0", "g1", "g4"]


def test_scores_without_groupby(scored):
    ax = sg.pl.scores(scored, "score", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all cells"]
    ax = sg.pl.scores(scored, "score", split="cond", show=False)
    assert ax.get_legend() is not None


@pytest.mark.parametrize("option", ["use_raw", "gene_symbols", "log"])
def test_scanpy_options_that_do_not_apply(scored, option):
    with pytest.raises(TypeError, match=f"does not take {option}="):
        sg.pl.scores(scored, "score", groupby="group", show=False, **{option: True})
    sg.tl.hits(scored, "score")
    with pytest.raises(TypeError, match=f"does not take {option}="):
        sg.pl.hit_fractions(scored, "score_hit", x="cond", show=False, **{option: True})


def test_one_gene_score_plots(scored):
    sg.tl.score(scored, "g0", key_added="one")
    assert np.isfinite(scored.obs["one"]).all()
    assert sg.pl.scores(scored, "one", groupby="group", show=False) is not None
