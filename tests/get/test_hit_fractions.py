from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

import scsig as sg

ISGS = ["ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "IFITM3", "OAS1", "LY6E", "IFI44L", "RSAD2"]


def _cells(spec):
    """AnnData with one row per cell from [(condition, sample, cell_type, n_cells, n_hits), ...]."""
    rows = []
    for cond, sample, ct, n, k in spec:
        rows += [(cond, sample, ct, i < k) for i in range(n)]
    obs = pd.DataFrame(rows, columns=["cond", "sample", "ct", "hit"])
    obs.index = [f"c{i}" for i in range(len(obs))]
    return ad.AnnData(obs=obs)


@pytest.fixture
def small():
    return _cells(
        [
            ("ctrl", "c1", "T", 20, 2),
            ("ctrl", "c2", "T", 30, 3),
            ("ctrl", "c3", "T", 25, 5),
            ("stim", "s1", "T", 20, 10),
            ("stim", "s2", "T", 40, 24),
            ("stim", "s3", "T", 5, 5),  # below min_cells
            ("ctrl", "c1", "B", 10, 1),
            ("stim", "s1", "B", 10, 9),
        ]
    )


def test_fractions_per_sample(small):
    frame = sg.get.hit_fractions(small, "hit", groupby=["cond", "ct"], sample_key="sample")
    assert list(frame.columns) == ["cond", "ct", "sample", "n_cells", "n_hits", "fraction"]
    assert len(frame) == 8
    row = frame.set_index(["cond", "ct", "sample"]).loc[("stim", "T", "s2")]
    assert (row["n_cells"], row["n_hits"]) == (40, 24)
    assert row["fraction"] == pytest.approx(0.6)
    small_unit = frame.set_index(["cond", "ct", "sample"]).loc[("stim", "T", "s3")]
    assert small_unit["n_cells"] == 5
    assert np.isnan(small_unit["fraction"])
    # levels in the obs column's order (sorted for strings, as scanpy), not by fraction; rows sorted by them
    assert list(frame["cond"].cat.categories) == ["ctrl", "stim"]
    assert list(frame["ct"].cat.categories) == ["B", "T"]
    assert frame["cond"].tolist()[:4] == ["ctrl"] * 4


def test_fractions_without_samples(small):
    frame = sg.get.hit_fractions(small, "hit", groupby="cond", min_cells=1)
    assert list(frame.columns) == ["cond", "n_cells", "n_hits", "fraction"]
    by = frame.set_index("cond")
    assert by.loc["ctrl", "n_cells"] == 85
    assert by.loc["ctrl", "fraction"] == pytest.approx(11 / 85)
    assert by.loc["stim", "fraction"] == pytest.approx(48 / 75)


def test_tests_exact_and_bh(small):
    frame, tests = sg.get.hit_fractions(
        small, "hit", groupby=["cond", "ct"], sample_key="sample", min_samples=1, return_tests=True
    )
    assert list(tests.columns) == [
        "ct",
        "group",
        "reference",
        "n_samples",
        "n_samples_reference",
        "mean_fraction",
        "mean_fraction_reference",
        "difference",
        "statistic",
        "pvalue",
        "padj",
    ]
    t = tests.set_index("ct")
    # T: stim (0.5, 0.6; s3 is below min_cells) vs ctrl (0.1, 0.1, 0.2): U = 6, exact p = 2/C(5,2) = 0.2
    assert t.loc["T", "reference"] == "ctrl"
    assert (t.loc["T", "n_samples"], t.loc["T", "n_samples_reference"]) == (2, 3)
    assert t.loc["T", "statistic"] == 6
    assert t.loc["T", "pvalue"] == pytest.approx(0.2)
    assert t.loc["T", "difference"] == pytest.approx(0.55 - 0.4 / 3)
    # B: one sample per side: exact p = 1
    assert t.loc["B", "pvalue"] == pytest.approx(1.0)
    np.testing.assert_allclose(tests["padj"], false_discovery_control(tests["pvalue"], method="bh"))


def test_min_samples_leaves_p_missing(small):
    _, tests = sg.get.hit_fractions(small, "hit", groupby=["cond", "ct"], sample_key="sample", return_tests=True)
    t = tests.set_index("ct")
    assert np.isnan(t.loc["B", "pvalue"])
    assert np.isnan(t.loc["B", "padj"])
    assert t.loc["T", "padj"] == pytest.approx(t.loc["T", "pvalue"])  # the only tested row


def test_reference_choices(small):
    _, tests = sg.get.hit_fractions(
        small, "hit", groupby="cond", sample_key="sample", reference="stim", return_tests=True
    )
    assert tests["group"].tolist() == ["ctrl"]
    assert tests["difference"].iloc[0] < 0
    _, rest = sg.get.hit_fractions(
        small, "hit", groupby="cond", sample_key="sample", reference="rest", return_tests=True
    )
    assert rest["group"].tolist() == ["ctrl", "stim"]
    assert set(rest["reference"]) == {"rest"}
    with pytest.raises(ValueError, match="not a level"):
        sg.get.hit_fractions(small, "hit", groupby="cond", sample_key="sample", reference="x", return_tests=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"groupby": "cond", "return_tests": True}, ValueError, "need sample_key"),
        ({"groupby": "nope"}, KeyError, "nope"),
        ({"groupby": ["cond", "cond"]}, ValueError, "twice"),
        ({"groupby": "cond", "sample_key": "cond"}, ValueError, "also in groupby"),
        ({"groupby": "cond", "min_cells": 0}, ValueError, "min_cells"),
    ],
)
def test_bad_arguments(small, kwargs, error, match):
    with pytest.raises(error, match=match):
        sg.get.hit_fractions(small, "hit", **kwargs)


def test_hits_must_be_boolean(small):
    small.obs["score"] = np.linspace(0, 1, small.n_obs)
    with pytest.raises(TypeError, match="boolean"):
        sg.get.hit_fractions(small, "score", groupby="cond")
    small.obs["int_hit"] = small.obs["hit"].astype(int)
    a = sg.get.hit_fractions(small, "int_hit", groupby="cond")
    b = sg.get.hit_fractions(small, "hit", groupby="cond")
    pd.testing.assert_frame_equal(a, b)


def test_kang_muscat_two_donors_two_conditions():
    adata = sg.datasets.kang_muscat()
    x = adata.X.toarray().astype(float)
    logn = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    adata.obs["isg"] = logn[:, adata.var_names.get_indexer(ISGS)].mean(axis=1)
    sg.tl.hits(adata, "isg", mode="percentile", cut=50)
    frame, tests = sg.get.hit_fractions(
        adata, "isg_hit", groupby=["group_id", "cluster_id"], sample_key="sample_id", return_tests=True
    )
    assert len(frame) == 20  # 4 samples x 5 clusters
    assert set(frame["sample_id"]) == {"ctrl101", "ctrl107", "stim101", "stim107"}
    assert frame["n_cells"].sum() == adata.n_obs
    assert list(frame["group_id"].cat.categories) == ["ctrl", "stim"]  # the categorical's order
    assert list(frame["cluster_id"].cat.categories) == list(adata.obs["cluster_id"].cat.categories)
    wide = frame.pivot_table(index="cluster_id", columns="group_id", values="fraction", aggfunc="min", observed=True)
    high = frame.pivot_table(index="cluster_id", columns="group_id", values="fraction", aggfunc="max", observed=True)
    assert (wide["stim"] > high["ctrl"]).all()  # every stim sample above every ctrl sample, in every cell type
    assert len(tests) == 5
    assert set(tests["group"]) == {"stim"}
    assert set(tests["reference"]) == {"ctrl"}
    assert (tests[["n_samples", "n_samples_reference"]] == 2).all().all()
    # 2 vs 2 samples: the exact two-sided p-value cannot go below 1/3
    np.testing.assert_allclose(tests["pvalue"], 1 / 3)
    np.testing.assert_allclose(tests["padj"], 1 / 3)


def test_exact_p_matches_scipy_permutation_with_ties():
    from scipy import stats

    from scsig.get._hits import _mwu

    rng = np.random.default_rng(3)
    for _ in range(25):
        a = rng.integers(0, 4, size=rng.integers(2, 6)) / 4
        b = rng.integers(0, 5, size=rng.integers(2, 6)) / 4
        if np.ptp(np.r_[a, b]) == 0:
            continue
        ref = stats.mannwhitneyu(a, b, method=stats.PermutationMethod(n_resamples=20000))
        u, p = _mwu(a, b)
        assert u == pytest.approx(ref.statistic)
        assert p == pytest.approx(ref.pvalue)
    # large samples fall back to scipy's asymptotic test
    a, b = rng.random(30), rng.random(30) + 0.3
    ref = stats.mannwhitneyu(a, b, method="asymptotic")
    assert _mwu(a, b) == pytest.approx((ref.statistic, ref.pvalue))


def test_muscat_donor_in_both_conditions_is_refused():
    adata = sg.datasets.kang_muscat()
    adata.obs["donor"] = adata.obs["sample_id"].astype(str).str[-3:]  # 101, 107: each in ctrl and stim
    adata.obs["hit"] = np.arange(adata.n_obs) % 3 == 0
    with pytest.raises(ValueError, match=r"Samples \['101', '107'\] of 'donor' have cells in several levels"):
        sg.get.hit_fractions(adata, "hit", groupby="group_id", sample_key="donor", return_tests=True)
    frame = sg.get.hit_fractions(adata, "hit", groupby="group_id", sample_key="donor")  # fractions alone are fine
    assert len(frame) == 4


@pytest.mark.parametrize("name", ["fraction", "n_cells", "n_hits"])
def test_groupby_named_like_an_output_column(small, name):
    small.obs[name] = small.obs["cond"]
    with pytest.raises(ValueError, match=f"\\['{name}'\\] of adata.obs have the name of an output column"):
        sg.get.hit_fractions(small, "hit", groupby=name)


@pytest.mark.parametrize("name", ["group", "pvalue", "reference"])
def test_stratum_named_like_a_test_column(small, name):
    small.obs[name] = small.obs["ct"]
    frame = sg.get.hit_fractions(small, "hit", groupby=["cond", name], sample_key="sample", min_cells=1)
    assert list(frame.columns) == ["cond", name, "sample", "n_cells", "n_hits", "fraction"]
    with pytest.raises(ValueError, match="name of an output column"):
        sg.get.hit_fractions(small, "hit", groupby=["cond", name], sample_key="sample", return_tests=True)


def test_obs_columns_with_private_looking_names(small):
    small.obs["_hit"] = small.obs["cond"]
    small.obs["k0"] = small.obs["ct"]
    frame = sg.get.hit_fractions(small, "hit", groupby=["_hit", "k0"], min_cells=1)
    assert list(frame.columns) == ["_hit", "k0", "n_cells", "n_hits", "fraction"]
    assert frame["n_hits"].sum() == small.obs["hit"].sum()


def test_category_order_follows_the_categorical(small):
    small.obs["cond"] = pd.Categorical(small.obs["cond"], categories=["stim", "ctrl"])
    small.obs["ct"] = pd.Categorical(small.obs["ct"], categories=["T", "B"])
    frame = sg.get.hit_fractions(small, "hit", groupby=["cond", "ct"], min_cells=1)
    assert list(frame["cond"].cat.categories) == ["stim", "ctrl"]
    assert list(frame["ct"].cat.categories) == ["T", "B"]
    assert frame[["cond", "ct"]].astype(str).agg("/".join, axis=1).tolist() == ["stim/T", "stim/B", "ctrl/T", "ctrl/B"]
