"""sg.tl.rank_genes_groups: numbers equal plain scipy/pandas computations, scanpy reads the result, bad input is refused."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from scipy import stats as st

import scsig as sg
from scsig.tl import _rank_stats

KEY = "rank_genes_groups_scsig"


def _unsorted(x):
    """CSR with each row's indices in reverse order (scipy's slicing path)."""
    m = sparse.csr_matrix(x)
    for i in range(m.shape[0]):
        a, b = m.indptr[i], m.indptr[i + 1]
        m.indices[a:b], m.data[a:b] = m.indices[a:b][::-1].copy(), m.data[a:b][::-1].copy()
    m.has_sorted_indices = False
    return m


def synthetic(n_obs=90, n_vars=25, *, seed=0, fmt="csr"):
    """Attribution-like shares with many zeros and ties, three groups, six donors, and a layer record."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.8, 1.0, size=(n_obs, n_vars)) * (rng.random((n_obs, n_vars)) < 0.4)
    group = np.array(["A", "B", "C"])[np.arange(n_obs) % 3]
    x[group == "B", :5] += 3  # genes 0-4 carry more in B
    x = np.round(x, 1)  # ties among the non-zero values too
    x = x / np.maximum(x.sum(1, keepdims=True), 1e-9) * 1000
    layer = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray, "unsorted": _unsorted}[fmt](
        x.astype(np.float32)
    )
    obs = pd.DataFrame(
        {"group": pd.Categorical(group), "donor": pd.Categorical([f"d{i % 6}" for i in range(n_obs)])},
        index=[f"c{i}" for i in range(n_obs)],
    )
    adata = ad.AnnData(X=sparse.csr_matrix(rng.poisson(1.0, (n_obs, n_vars)).astype(np.float32)), obs=obs)
    adata.var_names = [f"g{i}" for i in range(n_vars)]
    adata.layers["attr_ig"] = layer
    adata.uns["scsig"] = {"layers": {"attr_ig": {"method": "ig", "target": "self_similarity", "model": {"name": "m"}}}}
    return adata


def dense(adata):
    x = adata.layers["attr_ig"]
    return (x.toarray() if sparse.issparse(x) else np.asarray(x)).astype(np.float64)


def frame(adata, group, key=KEY):
    return sc.get.rank_genes_groups_df(adata, group, key=key).set_index("names").loc[adata.var_names]


@pytest.fixture
def small_blocks(monkeypatch):
    """Force several gene blocks, so that block boundaries are exercised."""
    monkeypatch.setattr(_rank_stats, "BLOCK_NNZ", 100)


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense", "unsorted"])
def test_wilcoxon_rest_equals_scipy(fmt, small_blocks):
    adata = synthetic(fmt=fmt)
    sg.tl.rank_genes_groups(adata, "group")
    x = dense(adata)
    for group in ["A", "B", "C"]:
        g = (adata.obs["group"] == group).to_numpy()
        ref = [st.mannwhitneyu(x[g, j], x[~g, j], method="asymptotic", use_continuity=False) for j in range(x.shape[1])]
        p = np.array([r.pvalue for r in ref])
        u = np.array([r.statistic for r in ref])
        df = frame(adata, group)
        np.testing.assert_allclose(df["pvals"], p, rtol=1e-6)
        signed_z = np.sign(u - g.sum() * (~g).sum() / 2) * st.norm.isf(p / 2)
        np.testing.assert_allclose(df["scores"], signed_z, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(df["pvals_adj"], st.false_discovery_control(p), rtol=1e-6)
        m1, m2 = x[g].mean(0), x[~g].mean(0)
        pc = adata.uns[KEY]["params"]["scsig"]["pseudocount"]
        np.testing.assert_allclose(pc, x.mean() / 10, rtol=1e-6)
        np.testing.assert_allclose(df["logfoldchanges"], np.log2((m1 + pc) / (m2 + pc)), rtol=1e-5)
        np.testing.assert_allclose(df["pct_nz_group"], (x[g] != 0).mean(0))
        np.testing.assert_allclose(df["pct_nz_reference"], (x[~g] != 0).mean(0))
        np.testing.assert_allclose(adata.uns[KEY]["means"][group], m1, rtol=1e-6)
        np.testing.assert_allclose(adata.uns[KEY]["means_rest"][group], m2, rtol=1e-6)
    top = adata.uns[KEY]["names"]["B"][:5]
    assert set(top) == {f"g{i}" for i in range(5)}


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense", "unsorted"])
def test_wilcoxon_reference_group_equals_scipy(fmt, small_blocks):
    adata = synthetic(fmt=fmt)
    sg.tl.rank_genes_groups(adata, "group", groups=["B"], reference="A", corr_method="bonferroni")
    x = dense(adata)
    b, a = (adata.obs["group"] == "B").to_numpy(), (adata.obs["group"] == "A").to_numpy()
    p = np.array(
        [st.mannwhitneyu(x[b, j], x[a, j], method="asymptotic", use_continuity=False).pvalue for j in range(25)]
    )
    df = frame(adata, "B")
    np.testing.assert_allclose(df["pvals"], p, rtol=1e-6)
    np.testing.assert_allclose(df["pvals_adj"], np.minimum(p * 25, 1), rtol=1e-6)
    np.testing.assert_allclose(df["pct_nz_reference"], (x[a] != 0).mean(0))
    assert adata.uns[KEY]["names"].dtype.names == ("B",)
    assert adata.uns[KEY]["params"]["reference"] == "A"


def test_t_test_equals_scipy_welch():
    adata = synthetic()
    sg.tl.rank_genes_groups(adata, "group", method="t-test")
    x = dense(adata)
    g = (adata.obs["group"] == "C").to_numpy()
    ref = st.ttest_ind(x[g], x[~g], axis=0, equal_var=False)
    df = frame(adata, "C")
    np.testing.assert_allclose(df["scores"], ref.statistic, rtol=1e-4)
    np.testing.assert_allclose(df["pvals"], ref.pvalue, rtol=1e-5)


def _sample_means(adata, mask):
    x = pd.DataFrame(dense(adata)[mask], columns=adata.var_names)
    return x.groupby(adata.obs["donor"].to_numpy()[mask]).mean()


@pytest.mark.parametrize("method", ["t-test", "wilcoxon"])
def test_donor_aware_equals_pandas_scipy(method):
    adata = synthetic()
    sg.tl.rank_genes_groups(adata, "group", sample_key="donor", method=method)
    g = (adata.obs["group"] == "B").to_numpy()
    a, b = _sample_means(adata, g), _sample_means(adata, ~g)
    if method == "t-test":
        ref = st.ttest_ind(a, b, axis=0, equal_var=False)
        expected_scores = ref.statistic
    else:
        ref = st.mannwhitneyu(a, b, axis=0, method="exact")  # 2 vs 4 donors: exact, gene by gene
        tied = np.array([len(set(np.r_[a[g], b[g]])) < len(a) + len(b) for g in a.columns])
        ref.pvalue[tied] = [_exact_mwu(a[g].to_numpy(), b[g].to_numpy()) for g in a.columns[tied]]
        expected_scores = np.sign(a.mean() - b.mean()).to_numpy() * st.norm.isf(ref.pvalue / 2)
    df = frame(adata, "B")
    np.testing.assert_allclose(df["pvals"], ref.pvalue, rtol=1e-6)
    np.testing.assert_allclose(df["scores"], expected_scores, rtol=1e-4)
    pc = adata.uns[KEY]["params"]["scsig"]["pseudocount"]
    np.testing.assert_allclose(df["logfoldchanges"], np.log2((a.mean() + pc) / (b.mean() + pc)), rtol=1e-5)
    assert adata.uns[KEY]["params"]["scsig"]["sample_key"] == "donor"


def _exact_mwu(x, y):
    """Two-sided Mann-Whitney p-value by enumerating every split of the pooled values (mid-ranks for ties)."""
    from itertools import combinations

    pooled = np.r_[x, y]
    if np.ptp(pooled) == 0:
        return 1.0
    r = st.rankdata(pooled)
    u_obs = r[: len(x)].sum()
    u = np.array([r[list(c)].sum() for c in combinations(range(len(pooled)), len(x))])
    return min(1.0, 2 * min(np.mean(u >= u_obs - 1e-9), np.mean(u <= u_obs + 1e-9)))


def test_donor_aware_wilcoxon_exact_whatever_the_other_genes():
    # 2 against 2 samples: the exact two-sided p-value is at least 1/3; a tie in another gene must not change it
    # (scipy's method="auto" switches the whole array to the normal approximation, p = 0.245 here)
    obs = pd.DataFrame(
        {"stim": pd.Categorical(["S", "S", "C", "C"] * 3), "sample": [f"s{i % 4}" for i in range(12)]},
        index=[f"c{i}" for i in range(12)],
    )
    x = np.zeros((12, 3), dtype=np.float32)
    x[:, 0] = [4, 3, 1, 2] * 3  # perfectly separated samples
    x[:, 1] = [1, 0, 1, 0] * 3  # ties between samples
    x[:, 2] = [5, 6, 5, 6] * 3
    adata = ad.AnnData(X=sparse.csr_matrix(x), obs=obs)
    adata.var_names = ["sep", "tied", "mixed"]
    adata.layers["attr_ig"] = sparse.csr_matrix(x)
    adata.uns["scsig"] = {"layers": {"attr_ig": {"method": "ig", "target": "self_similarity", "model": {"name": "m"}}}}
    sg.tl.rank_genes_groups(adata, "stim", groups=["S"], reference="C", sample_key="sample", method="wilcoxon")
    df = frame(adata, "S")
    np.testing.assert_allclose(df.loc["sep", "pvals"], 1 / 3)
    for g in ["tied", "mixed"]:
        s_means = x[[0, 1], adata.var_names.get_loc(g)]
        c_means = x[[2, 3], adata.var_names.get_loc(g)]
        np.testing.assert_allclose(df.loc[g, "pvals"], _exact_mwu(s_means, c_means))
    alone = adata[:, ["sep"]].copy()
    sg.tl.rank_genes_groups(alone, "stim", groups=["S"], reference="C", sample_key="sample", method="wilcoxon")
    assert frame(alone, "S").loc["sep", "pvals"] == df.loc["sep", "pvals"]


def test_donor_aware_paired_between_conditions():
    adata = synthetic(n_obs=120)
    # every donor has cells of both conditions: a paired test over donors
    adata.obs["stim"] = pd.Categorical(np.where((np.arange(120) // 6) % 2 == 0, "STIM", "CTRL"))
    sg.tl.rank_genes_groups(adata, "stim", groups=["STIM"], reference="CTRL", sample_key="donor", paired=True)
    a = _sample_means(adata, (adata.obs["stim"] == "STIM").to_numpy())
    b = _sample_means(adata, (adata.obs["stim"] == "CTRL").to_numpy())
    ref = st.ttest_rel(a, b.loc[a.index], axis=0)
    df = frame(adata, "STIM")
    np.testing.assert_allclose(df["pvals"], ref.pvalue, rtol=1e-6)
    np.testing.assert_allclose(df["scores"], ref.statistic, rtol=1e-4)


def _conditions(n_obs=120):
    """Conditions STIM, CTRL and a third one (OTHER, in neither side); donor d5 has STIM cells only."""
    adata = synthetic(n_obs=n_obs)
    i = np.arange(n_obs)
    stim = np.where((i // 6) % 2 == 0, "STIM", "CTRL")
    stim[(adata.obs["donor"] == "d5").to_numpy()] = "STIM"
    stim[i % 7 == 3] = "OTHER"
    adata.obs["stim"] = pd.Categorical(stim)
    x = adata.layers["attr_ig"].toarray()
    x[np.flatnonzero(stim == "STIM")[:40], :3] *= 4  # genes 0-2 differ by condition
    x[(adata.obs["donor"] == "d0").to_numpy(), 24] = 0  # a zero difference (paired) and a tie (unpaired)
    adata.layers["attr_ig"] = sparse.csr_matrix(x)
    return adata


def test_t_test_against_one_reference_group_equals_scipy_welch(small_blocks):
    adata = _conditions()
    sg.tl.rank_genes_groups(adata, "stim", groups=["STIM"], reference="CTRL", method="t-test")
    x = dense(adata)
    s, c = (adata.obs["stim"] == "STIM").to_numpy(), (adata.obs["stim"] == "CTRL").to_numpy()
    ref = st.ttest_ind(x[s], x[c], axis=0, equal_var=False)  # the OTHER cells are in neither side
    df = frame(adata, "STIM")
    np.testing.assert_allclose(df["scores"], ref.statistic, rtol=1e-4)
    np.testing.assert_allclose(df["pvals"], ref.pvalue, rtol=1e-5)
    np.testing.assert_allclose(df["pvals_adj"], st.false_discovery_control(ref.pvalue), rtol=1e-5)
    pc = adata.uns[KEY]["params"]["scsig"]["pseudocount"]
    np.testing.assert_allclose(pc, x[s | c].mean() / 10, rtol=1e-6)  # over the tested cells
    m1, m2 = x[s].mean(0), x[c].mean(0)
    np.testing.assert_allclose(df["logfoldchanges"], np.log2((m1 + pc) / (m2 + pc)), rtol=1e-5)
    np.testing.assert_allclose(df["pct_nz_reference"], (x[c] != 0).mean(0))
    np.testing.assert_allclose(adata.uns[KEY]["means_rest"]["STIM"], m2, rtol=1e-6)
    assert set(adata.uns[KEY]["names"]["STIM"][:3]) == {"g0", "g1", "g2"}


def _per_gene(test, a, b):
    """One scipy call per gene (columns); NaN results (no variation) become score 0, p-value 1, as in scsig."""
    out = np.array([[test(a[:, j], b[:, j])[0], test(a[:, j], b[:, j])[1]] for j in range(a.shape[1])])
    bad = ~np.isfinite(out).all(axis=1)
    out[bad] = [0.0, 1.0]
    return out[:, 0], out[:, 1]


def _exact_or_normal(d):
    ties = np.unique(np.abs(d)).size < d.size
    return "asymptotic" if ties or (d == 0).any() else "exact"


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("method", ["t-test", "wilcoxon"])
def test_donor_aware_against_one_reference_group_equals_scipy(method, paired):
    """Per-donor means with pandas; paired over the donors on both sides (d5 has no CTRL cells), or not."""
    adata = _conditions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy on genes without variation
        sg.tl.rank_genes_groups(
            adata, "stim", groups=["STIM"], reference="CTRL", sample_key="donor", paired=paired, method=method
        )
        a = _sample_means(adata, (adata.obs["stim"] == "STIM").to_numpy())
        b = _sample_means(adata, (adata.obs["stim"] == "CTRL").to_numpy())
        assert list(a.index) == [f"d{i}" for i in range(6)]
        assert "d5" not in b.index
        if paired:
            a = a.loc[b.index]  # d5 has nothing to pair with
        a, b = a.to_numpy(), b.to_numpy()
        if method == "t-test":
            stat, p = _per_gene(st.ttest_rel if paired else lambda u, v: st.ttest_ind(u, v, equal_var=False), a, b)
        elif paired:  # exact without zero or tied differences, else the normal approximation (as R's wilcox.test)
            _, p = _per_gene(lambda u, v: st.wilcoxon(u, v, zero_method="zsplit", method=_exact_or_normal(u - v)), a, b)
            stat = np.sign(np.median(a - b, axis=0)) * st.norm.isf(p / 2)
        else:  # exact, ties included: scipy's permutation distribution over every split of the samples
            exact = st.PermutationMethod(n_resamples=np.inf)
            _, p = _per_gene(lambda u, v: st.mannwhitneyu(u, v, alternative="two-sided", method=exact), a, b)
            stat = np.sign(a.mean(0) - b.mean(0)) * st.norm.isf(p / 2)
        if method == "wilcoxon":  # genes of both kinds occur: exact, and with ties or zeros
            cols = (a - b).T if paired else np.concatenate([a, b]).T
            kinds = {_exact_or_normal(c) if paired else np.unique(c).size < c.size for c in cols}
            assert len(kinds) == 2
    df = frame(adata, "STIM")
    np.testing.assert_allclose(df["pvals"], p, rtol=1e-6)
    np.testing.assert_allclose(df["scores"], stat, rtol=1e-4, atol=1e-8)
    pc = adata.uns[KEY]["params"]["scsig"]["pseudocount"]
    np.testing.assert_allclose(df["logfoldchanges"], np.log2((a.mean(0) + pc) / (b.mean(0) + pc)), rtol=1e-5)
    x, s = dense(adata), (adata.obs["stim"] == "STIM").to_numpy()
    np.testing.assert_allclose(adata.uns[KEY]["means"]["STIM"], x[s].mean(0), rtol=1e-6)  # means over cells
    assert adata.uns[KEY]["params"]["scsig"]["paired"] is paired


def test_scanpy_reads_the_result(tmp_path):
    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, n_steps=200, progress=False)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sg.tl.rank_genes_groups(adata, "group", n_genes=10)
    assert adata.uns[KEY]["names"].shape == (10,)
    scores = adata.uns[KEY]["scores"]["b"]
    assert np.all(np.diff(scores) <= 0)
    df = sc.get.rank_genes_groups_df(adata, None, key=KEY)
    assert set(df["group"]) == {"a", "b"}
    for plot in (
        sc.pl.rank_genes_groups_dotplot,
        sc.pl.rank_genes_groups_matrixplot,
        sc.pl.rank_genes_groups_heatmap,
        sc.pl.rank_genes_groups_stacked_violin,
    ):
        assert plot(adata, key=KEY, n_genes=3, show=False, dendrogram=False) is not None
    sc.pl.rank_genes_groups_matrixplot(adata, key=KEY, n_genes=3, layer="attr_ig", show=False, dendrogram=False)
    adata.write_h5ad(tmp_path / "r.h5ad")
    back = ad.read_h5ad(tmp_path / "r.h5ad")
    pd.testing.assert_frame_equal(
        sc.get.rank_genes_groups_df(back, "b", key=KEY), sc.get.rank_genes_groups_df(adata, "b", key=KEY)
    )
    assert back.uns[KEY]["params"]["scsig"]["model"] == "toy"


def test_copy_mudata_and_backed_layer(tmp_path):
    adata = synthetic()
    expected = sg.tl.rank_genes_groups(adata, "group", copy=True)
    assert KEY not in adata.uns
    want = sc.get.rank_genes_groups_df(expected, "B", key=KEY)
    md = pytest.importorskip("mudata")
    md.set_options(pull_on_update=False)
    mdata = md.MuData({"rna": adata.copy()})
    sg.tl.rank_genes_groups(mdata, "group", mod="rna")
    pd.testing.assert_frame_equal(sc.get.rank_genes_groups_df(mdata["rna"], "B", key=KEY), want)
    adata.write_h5ad(tmp_path / "a.h5ad")
    import h5py
    from anndata.io import sparse_dataset

    with h5py.File(tmp_path / "a.h5ad", "r") as f:
        on_disk = adata.copy()
        on_disk.layers["attr_ig"] = sparse_dataset(f["layers"]["attr_ig"])
        old = _rank_stats.ROW_CHUNK
        _rank_stats.ROW_CHUNK = 7  # several row chunks
        try:
            sg.tl.rank_genes_groups(on_disk, "group", reference="A", groups=["B"])
            sg.tl.rank_genes_groups(on_disk, "group", key_added="rest")
        finally:
            _rank_stats.ROW_CHUNK = old
    got = sc.get.rank_genes_groups_df(on_disk, "B", key="rest")
    pd.testing.assert_frame_equal(got, want)
    in_mem = sg.tl.rank_genes_groups(adata, "group", reference="A", groups=["B"], copy=True)
    pd.testing.assert_frame_equal(
        sc.get.rank_genes_groups_df(on_disk, "B", key=KEY), sc.get.rank_genes_groups_df(in_mem, "B", key=KEY)
    )


def _unchanged(adata, call, exc, match):
    before = adata.copy()
    with pytest.raises(exc, match=match):
        call(adata)
    assert set(adata.uns) == set(before.uns)
    pd.testing.assert_frame_equal(adata.obs, before.obs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"groupby": "nope"}, KeyError, "not a column of adata.obs"),
        ({"groupby": "group", "groups": ["Z"]}, ValueError, r"groups \['Z'\] not found"),
        ({"groupby": "group", "reference": "Z"}, ValueError, "reference='Z' is not a group"),
        ({"groupby": "group", "groups": ["A"], "reference": "A"}, ValueError, "its own reference"),
        ({"groupby": "group", "layer": "attr_dl"}, KeyError, "Run sg.tl.attribute first"),
        ({"groupby": "group", "n_genes": 26}, ValueError, "n_genes=26 must be an integer from 1 to the 25 genes"),
        ({"groupby": "group", "n_genes": 0}, ValueError, "n_genes=0"),
        ({"groupby": "group", "method": "logreg"}, ValueError, "method must be one of"),
        ({"groupby": "group", "paired": True}, ValueError, "pass sample_key="),
        ({"groupby": "group", "sample_key": "nope"}, KeyError, "sample_key='nope'"),
        ({"groupby": "group", "pseudocount": 0}, ValueError, "pseudocount must be a positive number"),
    ],
)
def test_bad_input_is_refused_and_adata_unchanged(kwargs, exc, match):
    adata = synthetic()
    _unchanged(adata, lambda a: sg.tl.rank_genes_groups(a, **kwargs), exc, match)


def test_group_with_one_cell_nan_labels_and_too_few_samples():
    adata = synthetic()
    adata.obs["one"] = pd.Categorical(["x"] + ["y"] * (adata.n_obs - 1))
    _unchanged(
        adata, lambda a: sg.tl.rank_genes_groups(a, "one"), ValueError, r"at least 2 cells; too few: \[\('x', 1\)"
    )
    adata.obs["holes"] = adata.obs["group"].astype(object)
    adata.obs.loc[adata.obs_names[:3], "holes"] = np.nan
    _unchanged(adata, lambda a: sg.tl.rank_genes_groups(a, "holes"), ValueError, "no label .NaN. for 3 of 90 cells")
    adata.obs["few"] = pd.Categorical(np.where(adata.obs["group"] == "A", "d0", adata.obs["donor"].astype(str)))
    _unchanged(
        adata,
        lambda a: sg.tl.rank_genes_groups(a, "group", sample_key="few"),
        ValueError,
        "Group 'A' has 1 and its reference 4 'few' sample.*at least 2 samples",
    )
    adata.obs["stim"] = pd.Categorical(np.where(adata.obs["donor"].isin(["d0", "d1", "d2"]), "STIM", "CTRL"))
    _unchanged(
        adata,
        lambda a: sg.tl.rank_genes_groups(
            a, "stim", groups=["STIM"], reference="CTRL", sample_key="donor", paired=True
        ),
        ValueError,
        "0 shared",
    )


def test_scanpy_result_is_never_replaced_silently():
    adata = synthetic()
    sc.tl.rank_genes_groups(adata, "group", method="t-test")
    ours_before = adata.uns["rank_genes_groups"]["names"].copy()
    _unchanged(
        adata,
        lambda a: sg.tl.rank_genes_groups(a, "group", key_added="rank_genes_groups"),
        ValueError,
        "holds scanpy's sc.tl.rank_genes_groups result; it is not replaced.*overwrite=True",
    )
    np.testing.assert_array_equal(adata.uns["rank_genes_groups"]["names"], ours_before)
    sg.tl.rank_genes_groups(adata, "group", key_added="rank_genes_groups", overwrite=True)
    assert "scsig" in adata.uns["rank_genes_groups"]["params"]
    sg.tl.rank_genes_groups(adata, "group", key_added="rank_genes_groups")  # our own result: replaced
    adata.uns["other"] = {"params": {}}
    with pytest.raises(ValueError, match="a result scsig did not write"):
        sg.tl.rank_genes_groups(adata, "group", key_added="other")


def test_layer_without_record_warns():
    adata = synthetic()
    adata.layers["mine"] = adata.layers["attr_ig"].copy()
    with pytest.warns(UserWarning, match="has no record"):
        sg.tl.rank_genes_groups(adata, "group", layer="mine")
    assert adata.uns[KEY]["params"]["scsig"]["model"] == "unknown"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sg.tl.rank_genes_groups(adata, "group", layer="attr_ig", key_added="again")


def test_signed_values_rank_as_scipy(small_blocks):
    adata = synthetic()
    x = adata.layers["attr_ig"].toarray()
    x[::2] *= -1  # negative values sit below the zeros
    adata.layers["attr_ig"] = sparse.csr_matrix(x)
    sg.tl.rank_genes_groups(adata, "group", groups=["A"], reference="C")
    a, c = (adata.obs["group"] == "A").to_numpy(), (adata.obs["group"] == "C").to_numpy()
    x = x.astype(np.float64)
    p = [st.mannwhitneyu(x[a, j], x[c, j], method="asymptotic", use_continuity=False).pvalue for j in range(25)]
    np.testing.assert_allclose(frame(adata, "A")["pvals"], p, rtol=1e-6)
