from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scsig as sg


@pytest.fixture
def scored():
    """200 cells with known scores 0..199 (shuffled) and two groups of 100."""
    rng = np.random.default_rng(0)
    score = rng.permutation(200).astype(float)
    group = np.where(np.arange(200) < 100, "a", "b")
    score[group == "b"] += 1000  # group b scores all higher
    obs = pd.DataFrame({"score": score, "group": pd.Categorical(group)}, index=[f"c{i}" for i in range(200)])
    return ad.AnnData(obs=obs)


def test_percentile_default_top_ten_percent(scored):
    sg.tl.hits(scored, "score")
    hit = scored.obs["score_hit"]
    assert hit.dtype == bool
    assert int(hit.sum()) == 20
    s = scored.obs["score"]
    assert s[hit].min() > s[~hit].max()
    rec = scored.uns["scsig"]["hits"]["score_hit"]
    assert rec["mode"] == "percentile"
    assert rec["cut"] == 90.0
    assert rec["above"] is True
    assert rec["groupby"] == "none"
    assert rec["reference"] == "all cells"
    table = sg.get.hit_thresholds(scored, "score_hit")
    assert table.loc["all", "threshold"] == pytest.approx(np.percentile(s, 90))
    assert table.loc["all", "floor"] == s.min()
    assert rec["n_hits_total"] == 20


def test_quantile_equals_percentile(scored):
    sg.tl.hits(scored, "score", mode="percentile", cut=75, key_added="p")
    sg.tl.hits(scored, "score", mode="quantile", cut=0.75, key_added="q")
    assert (scored.obs["p"] == scored.obs["q"]).all()
    assert int(scored.obs["q"].sum()) == 50


def test_below(scored):
    sg.tl.hits(scored, "score", above=False)
    s = scored.obs["score"]
    hit = scored.obs["score_hit"]
    assert int(hit.sum()) == 20
    assert s[hit].max() < s[~hit].min()
    assert scored.uns["scsig"]["hits"]["score_hit"]["cut"] == 10.0


def test_value_mode_is_inclusive_and_needs_cut(scored):
    s = scored.obs["score"].to_numpy()
    sg.tl.hits(scored, "score", mode="value", cut=1150.0)
    np.testing.assert_array_equal(scored.obs["score_hit"].to_numpy(), s >= 1150.0)
    assert scored.obs["score_hit"].sum() == (s >= 1150).sum() > 0
    with pytest.raises(ValueError, match="needs cut"):
        sg.tl.hits(scored, "score", mode="value")


def test_zscore_by_hand(scored):
    s = scored.obs["score"].to_numpy()
    z = (s - s.mean()) / s.std()
    sg.tl.hits(scored, "score", mode="zscore", cut=0.5)
    np.testing.assert_array_equal(scored.obs["score_hit"].to_numpy(), z >= 0.5)
    sg.tl.hits(scored, "score", mode="zscore")  # default 2 SD: none here (a bimodal, bounded score)
    np.testing.assert_array_equal(scored.obs["score_hit"].to_numpy(), z >= 2)


def test_groupby_thresholds_within_groups(scored):
    sg.tl.hits(scored, "score", cut=90, groupby="group")
    hit = scored.obs["score_hit"]
    # overall the top 10 % would all be in group b; within groups each gets its own top 10 %
    assert hit[scored.obs["group"] == "a"].sum() == 10
    assert hit[scored.obs["group"] == "b"].sum() == 10
    rec = scored.uns["scsig"]["hits"]["score_hit"]
    assert list(rec["groups"]) == ["a", "b"]
    table = sg.get.hit_thresholds(scored, "score_hit")
    assert table["n_hits"].tolist() == [10, 10]
    for g in ("a", "b"):
        s = scored.obs.loc[scored.obs["group"] == g, "score"]
        assert table.loc[g, "threshold"] == pytest.approx(np.percentile(s, 90))
    sg.tl.hits(scored, "score", cut=90, key_added="overall")
    assert scored.obs.loc[scored.obs["group"] == "a", "overall"].sum() == 0


def test_nan_scores_and_missing_groups_are_not_hits(scored):
    scored.obs.loc["c0", "score"] = np.nan
    scored.obs["group"] = scored.obs["group"].astype(object)
    scored.obs.loc["c1", "group"] = None
    with pytest.warns(UserWarning, match="no 'group' label"), pytest.warns(UserWarning, match="ties with the lowest"):
        sg.tl.hits(scored, "score", cut=0, groupby="group")
    assert not scored.obs.loc["c0", "score_hit"]
    assert not scored.obs.loc["c1", "score_hit"]
    assert scored.obs["score_hit"].sum() == 196  # each group's lowest score is not a hit


def test_constant_group_has_no_zscore_hits():
    obs = pd.DataFrame({"score": [1.0] * 5 + [0.0, 1.0, 2.0, 3.0, 10.0], "g": ["x"] * 5 + ["y"] * 5})
    adata = ad.AnnData(obs=obs.set_index(pd.Index([str(i) for i in range(10)])))
    sg.tl.hits(adata, "score", mode="zscore", cut=1, groupby="g")
    assert adata.obs["score_hit"].tolist() == [False] * 5 + [False] * 4 + [True]


def test_copy_leaves_input_and_h5ad_roundtrip(scored, tmp_path):
    out = sg.tl.hits(scored, "score", copy=True)
    assert "score_hit" not in scored.obs
    assert "scsig" not in scored.uns
    assert out.obs["score_hit"].sum() == 20
    assert sg.tl.hits(scored, "score") is None
    out.write_h5ad(tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    assert back.obs["score_hit"].dtype == bool
    pd.testing.assert_frame_equal(sg.get.hit_thresholds(back, "score_hit"), sg.get.hit_thresholds(out, "score_hit"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "top"}, ValueError, "mode must be"),
        ({"mode": "percentile", "cut": 0.9 * 200}, ValueError, r"\[0, 100\]"),
        ({"mode": "quantile", "cut": 90}, ValueError, r"\[0, 1\]"),
        ({"cut": float("nan")}, ValueError, "finite"),
        ({"groupby": "nope"}, KeyError, "groupby"),
    ],
)
def test_bad_arguments(scored, kwargs, error, match):
    with pytest.raises(error, match=match):
        sg.tl.hits(scored, "score", **kwargs)


def test_missing_score_column(scored):
    with pytest.raises(KeyError, match=r"sg.tl.score"):
        sg.tl.hits(scored, "nope")


def test_end_to_end_on_toy(toy):
    adata, model = toy
    sg.tl.attribute(adata, model, progress=False)
    sg.tl.score(adata, ["g0", "g1", "g2"])
    sg.tl.hits(adata)
    assert adata.obs["score_hit"].sum() == 6


def test_unknown_score_names_the_score_columns():
    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, progress=False, n_steps=8)
    for k in range(12):  # many other columns before the scores
        adata.obs.insert(0, f"qc{k}", 1.0)
    sg.tl.score(adata, {"B": ["g0", "g1"], "T": ["g2", "g3"]})
    with pytest.raises(KeyError, match=r"\['score_B', 'score_T'\]"):
        sg.tl.hits(adata, "score_X")


@pytest.mark.parametrize("cut", ["95", [95], True])
def test_cut_of_the_wrong_type_names_cut(scored, cut):
    with pytest.raises(TypeError, match="cut must be a number"):
        sg.tl.hits(scored, "score", cut=cut)
    assert "score_hit" not in scored.obs
