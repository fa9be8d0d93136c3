from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import scsig as sg


@pytest.mark.parametrize("kind", ["violin", "box", "strip"])
def test_scores_image(scored, check_image, kind):
    fig = sg.pl.scores(scored, "score", groupby="group", split="cond", kind=kind, return_fig=True)
    check_image(f"scores_{kind}", fig)


def test_scores_image_no_split(scored, check_image):
    fig = sg.pl.scores(scored, groupby="group", return_fig=True)
    check_image("scores_violin_nosplit", fig)


def test_scores_draws_the_data(scored):
    ax = sg.pl.scores(scored, groupby="group", kind="strip", show=False)
    offsets = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    np.testing.assert_allclose(np.sort(offsets), np.sort(scored.obs["score"].to_numpy()))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert ax.get_ylabel() == "score (classic)"  # the score and the mode it was scored with


def test_scores_order_and_labels(scored):
    ax = sg.pl.scores(scored, groupby="group", order=["b", "a"], ylabel="IFN", show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "a"]
    assert ax.get_ylabel() == "IFN"
    with pytest.raises(ValueError, match="not in"):
        sg.pl.scores(scored, groupby="group", order=["zz"], show=False)


def test_scores_return_contract(scored, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    assert isinstance(sg.pl.scores(scored, groupby="group", show=False), Axes)
    assert isinstance(sg.pl.scores(scored, groupby="group", return_fig=True), Figure)
    assert sg.pl.scores(scored, groupby="group", show=True) is None
    assert len(shown) == 1
    monkeypatch.setattr(sg.settings, "autoshow", True)
    assert sg.pl.scores(scored, groupby="group") is None
    assert len(shown) == 2
    monkeypatch.setattr(sg.settings, "autoshow", False)
    assert isinstance(sg.pl.scores(scored, groupby="group"), Axes)
    # a caller's ax: drawn into, returned, never shown
    _, ax = plt.subplots()
    assert sg.pl.scores(scored, groupby="group", ax=ax, show=True) is ax
    assert len(ax.collections) > 0
    assert len(shown) == 2


def test_scores_save(scored, tmp_path):
    out = tmp_path / "s.png"
    sg.pl.scores(scored, groupby="group", save=out, show=False)
    assert out.stat().st_size > 1000


def test_scores_no_global_rc_change(scored):
    before = dict(mpl.rcParams)
    sg.pl.scores(scored, groupby="group", split="cond", kind="box", show=False)
    after = dict(mpl.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()


def test_scores_several_keys(scored):
    sg.tl.score(scored, {"one": ["g0", "g1"], "two": ["g5", "g6"]}, key_added="sig")
    axes = sg.pl.scores(scored, "sig", groupby="group", show=False)
    assert [a.get_ylabel() for a in axes] == ["sig_one (cosine)", "sig_two (cosine)"]
    axes = sg.pl.scores(scored, ["score", "sig_two"], groupby="group", show=False)
    assert len(axes) == 2
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="ax= takes one score"):
        sg.pl.scores(scored, "sig", groupby="group", ax=ax)


def test_scores_groupby_several_columns(scored):
    ax = sg.pl.scores(scored, groupby=["group", "cond"], show=False, rotation=0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a_ctrl", "a_stim", "b_ctrl", "b_stim"]


def test_scores_uses_uns_colors(scored):
    scored.uns["cond_colors"] = ["#00ff00", "#0000ff"]
    ax = sg.pl.scores(scored, groupby="group", split="cond", kind="box", points=False, show=False)
    faces = {mpl.colors.to_hex(p.get_facecolor()) for p in ax.patches}
    assert {"#00ff00", "#0000ff"} <= faces
    assert "cond_colors" in scored.uns  # untouched
    assert list(scored.uns["cond_colors"]) == ["#00ff00", "#0000ff"]


def test_scores_errors(scored):
    with pytest.raises(KeyError, match="sg.tl.score"):
        sg.pl.scores(scored, "nope", groupby="group")
    with pytest.raises(KeyError, match="not a column"):
        sg.pl.scores(scored, groupby="nope")
    with pytest.raises(ValueError, match="kind must be"):
        sg.pl.scores(scored, groupby="group", kind="bar")
    scored.obs["flag"] = scored.obs["score"] > 10
    with pytest.raises(TypeError, match="not a numeric"):
        sg.pl.scores(scored, "flag", groupby="group")
    scored.obs["float_group"] = np.linspace(0, 1, scored.n_obs)
    with pytest.raises(TypeError, match="floats"):
        sg.pl.scores(scored, groupby="float_group")


def test_scores_works_with_scanpy_scores(scored):
    import scanpy as sc

    scored.layers["counts"] = scored.X.copy()
    sc.pp.normalize_total(scored, target_sum=1e4)
    sc.pp.log1p(scored)
    sc.tl.score_genes(scored, ["g0", "g1", "g2"], score_name="sc_score", ctrl_size=10, n_bins=5)
    ax = sg.pl.scores(scored, "sc_score", groupby="group", show=False)
    assert ax.get_ylabel() == "sc_score"  # not an scsig score: its name alone
    assert isinstance(scored.obs["sc_score"], pd.Series)


def _clip_floor(ax, artist) -> float:
    """The lowest y (data units) the artist is drawn at: its clip box's bottom."""
    box = artist.get_clip_box()
    return float(ax.transData.inverted().transform(box.get_points())[0, 1])


def test_violins_taper_past_the_extreme_cells_and_not_below_zero(scored):
    """Cut flat at a group's highest cell, a wide violin end reads as a ceiling of the score (issue 26)."""
    from matplotlib.collections import PolyCollection

    adata = scored.copy()
    ax = sg.pl.scores(adata, "score", groupby="group", points=False, show=False)
    bodies = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bodies) == 2
    for body, (_, values) in zip(bodies, adata.obs.groupby("group", observed=True)["score"], strict=True):
        y = np.concatenate([p.vertices[:, 1] for p in body.get_paths()])
        assert y.max() > values.max()  # the density tapers past the highest cell
        assert y.min() < values.min()  # and past the lowest, where it may go (no clip above zero)
        assert _clip_floor(ax, body) < values.min()
    adata.obs["zeros"] = np.where(np.arange(adata.n_obs) % 3 == 0, 0.0, adata.obs["score"])
    ax = sg.pl.scores(adata, "zeros", groupby="group", points=False, show=False)
    bodies = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert bodies
    for body in bodies:  # a score that is never negative: nothing drawn below 0
        assert _clip_floor(ax, body) == pytest.approx(0.0, abs=1e-9)
    plt.close("all")
