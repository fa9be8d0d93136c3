"""Hits that mean something: never at the minimum, a warning on ties, thresholds from a reference condition."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scsig as sg


@pytest.fixture
def rare():
    """300 cells whose scores are 0 in 93 % of cells (a rare-gene signature): B cells score, others do not."""
    rng = np.random.default_rng(0)
    ct = np.repeat(["B", "Mono", "T"], 100)
    cond = np.tile(["ctrl", "stim"], 150)
    score = np.zeros(300)
    on = rng.choice(np.flatnonzero(ct == "B"), 21, replace=False)
    score[on] = rng.uniform(1, 5, on.size)
    obs = pd.DataFrame(
        {"score": score, "cell_type": pd.Categorical(ct), "condition": pd.Categorical(cond)},
        index=[f"c{i}" for i in range(300)],
    )
    return ad.AnnData(obs=obs)


def test_zero_scores_are_never_hits(rare):
    assert np.percentile(rare.obs["score"], 90) == 0  # the threshold falls on the zeros
    with pytest.warns(UserWarning, match=r"ties with the lowest score \(all: 279 of 300 cells at 0\)"):
        sg.tl.hits(rare, "score", cut=90)
    hit = rare.obs["score_hit"].to_numpy()
    np.testing.assert_array_equal(hit, rare.obs["score"].to_numpy() > 0)
    with pytest.warns(UserWarning, match="ties with the lowest"):
        sg.tl.hits(rare, "score", cut=90, groupby="cell_type", key_added="by_type")
    by_type = rare.obs.groupby("cell_type", observed=True)["by_type"].mean()
    assert by_type["Mono"] == 0
    assert by_type["T"] == 0  # they were 100 % "hits" when s >= 0 counted
    assert by_type["B"] == pytest.approx(0.10)  # within B the 90th percentile is above 0


def test_value_mode_at_the_minimum(rare):
    with pytest.warns(UserWarning, match="ties with the lowest"):
        sg.tl.hits(rare, "score", mode="value", cut=0)
    assert rare.obs["score_hit"].sum() == 21


def test_below_is_never_at_the_maximum():
    obs = pd.DataFrame({"s": [5.0] * 8 + [1.0, 2.0]}, index=[str(i) for i in range(10)])
    adata = ad.AnnData(obs=obs)
    with pytest.warns(UserWarning, match="ties with the highest"):
        sg.tl.hits(adata, "s", above=False, cut=50)
    assert adata.obs["s_hit"].tolist() == [False] * 8 + [True, True]


def test_no_tie_no_warning(rare):
    import warnings

    rare.obs["score"] += np.linspace(0, 0.01, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sg.tl.hits(rare, "score", cut=90)
    assert rare.obs["score_hit"].sum() == 30


def _by_hand(s, ref, cut):
    theta = np.percentile(s[ref], cut)
    return (s >= theta) & (s > s[ref].min())


def test_reference_dict_and_mask_by_hand():
    rng = np.random.default_rng(1)
    cond = np.tile(["ctrl", "stim"], 100)
    s = rng.normal(size=200) + (cond == "stim") * 1.5
    adata = ad.AnnData(obs=pd.DataFrame({"s": s, "cond": cond}, index=[f"c{i}" for i in range(200)]))
    sg.tl.hits(adata, "s", cut=95, reference={"cond": "ctrl"})
    expected = _by_hand(s, cond == "ctrl", 95)
    np.testing.assert_array_equal(adata.obs["s_hit"].to_numpy(), expected)
    assert expected[cond == "stim"].mean() > 0.3  # a shift the control threshold detects
    assert expected[cond == "ctrl"].mean() == pytest.approx(0.05)
    sg.tl.hits(adata, "s", cut=95, reference=(cond == "ctrl"), key_added="mask_hit")
    np.testing.assert_array_equal(adata.obs["mask_hit"], adata.obs["s_hit"])
    rec = adata.uns["scsig"]["hits"]["s_hit"]
    assert rec["reference"] == "cond in ['ctrl']"
    table = sg.get.hit_thresholds(adata, "s_hit")
    assert table.loc["all", "n_reference"] == 100
    assert table.loc["all", "threshold"] == pytest.approx(np.percentile(s[cond == "ctrl"], 95))


def test_reference_per_group():
    rng = np.random.default_rng(2)
    n = 400
    ct = np.repeat(["x/1", "y 2"], n // 2)
    cond = np.tile(["ctrl", "stim", "other"], n)[:n]
    s = rng.gamma(2, size=n) + (ct == "y 2") * 10
    adata = ad.AnnData(obs=pd.DataFrame({"s": s, "ct": ct, "cond": cond}, index=[f"c{i}" for i in range(n)]))
    sg.tl.hits(adata, "s", cut=90, groupby="ct", reference={"cond": ["ctrl"]})
    table = sg.get.hit_thresholds(adata, "s_hit")
    assert table.index.tolist() == ["x/1", "y 2"]
    for g in ("x/1", "y 2"):
        m = ct == g
        np.testing.assert_array_equal(adata.obs["s_hit"].to_numpy()[m], _by_hand(s[m], (cond == "ctrl")[m], 90))
        assert table.loc[g, "threshold"] == pytest.approx(np.percentile(s[m & (cond == "ctrl")], 90))
        assert table.loc[g, "n_reference"] == (m & (cond == "ctrl")).sum()


def test_group_without_reference_cells_has_no_hits():
    obs = pd.DataFrame(
        {"s": np.arange(40.0), "g": ["a"] * 20 + ["b"] * 20, "cond": ["ctrl", "stim"] * 10 + ["stim"] * 20},
        index=[str(i) for i in range(40)],
    )
    adata = ad.AnnData(obs=obs)
    with pytest.warns(UserWarning, match=r"have no reference cells \(\['b'\]\)"):
        sg.tl.hits(adata, "s", groupby="g", reference={"cond": "ctrl"})
    assert not adata.obs.loc[adata.obs["g"] == "b", "s_hit"].any()


@pytest.mark.parametrize(
    ("reference", "error", "match"),
    [
        ({"nope": "ctrl"}, KeyError, "not a column"),
        ({"cond": "CTRL"}, ValueError, "not found"),
        ({}, ValueError, "empty dict"),
        (np.ones(3, bool), TypeError, "boolean mask over the 4 cells"),
        (np.zeros(4, bool), ValueError, "selects no cells"),
        ("ctrl", TypeError, "boolean mask"),
    ],
)
def test_bad_reference(reference, error, match):
    obs = pd.DataFrame({"s": [1.0, 2.0, 3.0, 4.0], "cond": ["ctrl", "stim"] * 2}, index=list("abcd"))
    adata = ad.AnnData(obs=obs)
    with pytest.raises(error, match=match):
        sg.tl.hits(adata, "s", reference=reference)
    assert "s_hit" not in adata.obs


def test_key_added_must_not_replace_what_it_reads(rare):
    before = rare.obs.copy()
    for key_added in ("cell_type", "condition"):
        with pytest.raises(ValueError, match=f"adata.obs\\['{key_added}'\\], which this call reads"):
            sg.tl.hits(rare, "score", groupby="cell_type", reference={"condition": "ctrl"}, key_added=key_added)
    pd.testing.assert_frame_equal(rare.obs, before)
    rare.obs["mine"] = "user data"
    with pytest.warns(UserWarning, match=r"\['mine'\] exist and were not written by scsig"):
        sg.tl.hits(rare, "score", cut=99, key_added="mine")
    import warnings

    with warnings.catch_warnings():  # replacing scsig's own column is silent
        warnings.filterwarnings("error", message=".*not written by scsig")
        sg.tl.hits(rare, "score", cut=98, key_added="mine")
