from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import scsig as sg


@pytest.fixture
def hit_table():
    """Per-sample fractions of 3 conditions x 2 cell types, 4 samples each (fixed numbers)."""
    rng = np.random.default_rng(3)
    rows = []
    for cond, base in [("healthy", 0.05), ("lupus", 0.3), ("kawasaki", 0.45)]:
        for i in range(4):
            for ct, factor in [("mono", 1.5), ("T", 0.5)]:
                frac = float(np.clip(base * factor + rng.normal(0, 0.04), 0, 1))
                rows.append({"disease": cond, "sample_id": f"{cond}{i}", "cell_type": ct, "fraction": frac})
    frame = pd.DataFrame(rows)
    frame["disease"] = pd.Categorical(frame["disease"], categories=["healthy", "lupus", "kawasaki"])
    return frame


def test_hit_fractions_image(hit_table, check_image):
    per_sample = hit_table.groupby(["disease", "sample_id"], observed=True, as_index=False)["fraction"].mean()
    fig = sg.pl.hit_fractions(per_sample, x="disease", return_fig=True)
    check_image("hit_fractions", fig)


def test_hit_fractions_hue_image(hit_table, check_image):
    fig = sg.pl.hit_fractions(hit_table, x="disease", hue="cell_type", return_fig=True)
    check_image("hit_fractions_hue", fig)


def test_points_are_the_units(hit_table):
    ax = sg.pl.hit_fractions(hit_table, x="disease", hue="cell_type", show=False)
    ys = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
    np.testing.assert_allclose(np.sort(ys), np.sort(100 * hit_table["fraction"].to_numpy()))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["healthy", "lupus", "kawasaki"]
    assert ax.get_ylabel() == "hit cells (%)"
    ax = sg.pl.hit_fractions(hit_table, x="disease", percent=False, order=["kawasaki", "healthy", "lupus"], show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["kawasaki", "healthy", "lupus"]
    assert ax.get_ylabel() == "hit fraction"


def test_from_anndata_matches_get(scored):
    sg.tl.hits(scored, "score", mode="percentile", cut=70)
    table = sg.get.hit_fractions(scored, "score_hit", groupby="cond", sample_key="sample")
    ax = sg.pl.hit_fractions(scored, "score_hit", x="cond", sample_key="sample", show=False)
    ys = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
    np.testing.assert_allclose(np.sort(ys), np.sort(100 * table["fraction"].dropna().to_numpy()))
    # the AnnData's order of the conditions, not the table's (by decreasing fraction)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ctrl", "stim"]


def test_per_group_without_samples(scored):
    sg.tl.hits(scored, "score", mode="quantile", cut=0.5)
    ax = sg.pl.hit_fractions(scored, "score_hit", x="cond", hue="group", show=False)
    ys = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
    assert ys.size == 4  # 2 conditions x 2 groups, one unit each
    expected = scored.obs.groupby(["cond", "group"], observed=True)["score_hit"].mean().to_numpy() * 100
    np.testing.assert_allclose(np.sort(ys), np.sort(expected))


def test_contract_and_errors(hit_table, scored, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    assert isinstance(sg.pl.hit_fractions(hit_table, x="disease", show=False), Axes)
    assert isinstance(sg.pl.hit_fractions(hit_table, x="disease", return_fig=True), Figure)
    assert sg.pl.hit_fractions(hit_table, x="disease", show=True) is None
    _, ax = plt.subplots()
    assert sg.pl.hit_fractions(hit_table, x="disease", ax=ax, show=True) is ax
    assert shown == [1]
    with pytest.raises(KeyError, match="not in the hit-fraction table"):
        sg.pl.hit_fractions(hit_table, x="condition")
    with pytest.raises(ValueError, match="go with an AnnData"):
        sg.pl.hit_fractions(hit_table, "score_hit", x="disease")
    with pytest.raises(ValueError, match="hits_key"):
        sg.pl.hit_fractions(scored, x="cond")
    with pytest.raises(ValueError, match="not in the data"):
        sg.pl.hit_fractions(hit_table, x="disease", order=["nope"])


def test_hit_fractions_label_says_how_hits_were_called():
    import pandas as pd

    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, progress=False, n_steps=8)
    sg.tl.score(adata, ["g0", "g1"])
    adata.obs["cond"] = pd.Categorical(np.tile(["ctrl", "stim"], adata.n_obs // 2))
    adata.obs["sample"] = pd.Categorical([f"s{i % 6}" for i in range(adata.n_obs)])
    sg.tl.hits(adata, "score", cut=95, reference={"cond": "ctrl"})
    want = "hit cells (%)\nscore >= 95th percentile of cond in ['ctrl']"
    assert sg.pl.hit_fractions(adata, "score_hit", x="cond", sample_key="sample", show=False).get_ylabel() == want
    table = sg.get.hit_fractions(adata, "score_hit", groupby="cond", sample_key="sample")
    assert sg.pl.hit_fractions(table, x="cond", show=False).get_ylabel() == want  # the table carries the rule
    assert sg.pl.hit_fractions(table.assign(x=1), x="cond", ylabel="mine", show=False).get_ylabel() == "mine"
