"""Scoring modes of sg.tl.score, each against a plain numpy computation written independently here."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scsig as sg
from scsig.tl._score_modes import MODES, control_genes

GENES = ["g3", "g0", "g7", "g12"]


@pytest.fixture
def attributed(toy):
    adata, model = toy
    sg.tl.attribute(adata, model)
    return adata


def _dense(adata):
    return adata.layers["attr_ig"].toarray().astype(np.float64)


def _cols(adata, genes):
    return np.array([adata.var_names.get_loc(g) for g in genes])


def _numpy_top(a, cols, k):
    out = np.empty(a.shape[0])
    for i, row in enumerate(a):
        top = np.sort(row)[::-1][:k].sum()
        out[i] = row[cols].mean() * row.sum() / top if top > 0 else 0.0
    return out


def _numpy_rank(a, cols, r_max):
    out = np.empty(a.shape[0])
    for i, row in enumerate(a):
        vals = []
        for c in cols:
            if row[c] == 0:
                vals.append(0.0)
                continue
            r = 1 + int((row > row[c]).sum())  # no ties in float attributions of the toy data
            vals.append((r_max - r + 1) / r_max if r <= r_max else 0.0)
        out[i] = np.mean(vals)
    return out


def _numpy_detected(a, cols):
    n = (a != 0).sum(1)
    t = a.sum(1)
    return np.where(t > 0, a[:, cols].mean(1) * n / np.where(t > 0, t, 1), 0.0)


def _numpy_cosine(a, cols, weights=None):
    w = np.zeros(a.shape[1])
    w[cols] = 1.0 if weights is None else weights
    out = np.empty(a.shape[0])
    for i, row in enumerate(a):
        norm = np.sqrt((row**2).sum()) * np.sqrt((w**2).sum())
        out[i] = (row * w).sum() / norm if norm > 0 else 0.0
    return out


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
@pytest.mark.parametrize(
    ("mode", "kwds"),
    [("top", {"top_k": 5}), ("top", {}), ("rank", {"max_rank": 6}), ("cosine", {}), ("detected", {})],
)
def test_modes_match_numpy(attributed, fmt, mode, kwds):
    adata = attributed
    a = _dense(adata)
    layer = adata.layers["attr_ig"]
    adata.layers["attr_ig"] = {"csr": layer, "csc": layer.tocsc(), "dense": layer.toarray()}[fmt]
    sg.tl.score(adata, GENES, mode=mode, mode_kwds=kwds)
    cols = _cols(adata, GENES)
    expected = {
        "top": lambda: _numpy_top(a, cols, kwds.get("top_k", 300)),
        "rank": lambda: _numpy_rank(a, cols, kwds["max_rank"]),
        "detected": lambda: _numpy_detected(a, cols),
        "cosine": lambda: _numpy_cosine(a, cols),
    }[mode]()
    np.testing.assert_allclose(adata.obs["score"], expected, rtol=1e-6)
    assert adata.obs["score"].dtype == np.float64
    assert adata.uns["scsig"]["scores"]["score"]["mode"] == mode


def test_classic_is_the_mean(attributed):
    adata = attributed
    sg.tl.score(adata, GENES, mode="classic", key_added="classic")
    np.testing.assert_allclose(adata.obs["classic"], _dense(adata)[:, _cols(adata, GENES)].mean(1), rtol=1e-6)
    assert adata.uns["scsig"]["scores"]["classic"]["mode"] == "classic"


def test_top_large_k_is_classic(attributed):
    adata = attributed
    sg.tl.score(adata, GENES, mode="classic", key_added="classic")
    sg.tl.score(adata, GENES, mode="top", mode_kwds={"top_k": adata.n_vars}, key_added="top")
    np.testing.assert_allclose(adata.obs["top"], adata.obs["classic"], rtol=1e-9)


@pytest.mark.parametrize("mode", ["control_diff", "control_ratio"])
def test_control_modes_match_numpy(attributed, mode):
    adata = attributed
    a = _dense(adata)
    cols = _cols(adata, GENES)
    sg.tl.score(adata, GENES, mode=mode, mode_kwds={"n_bins": 4, "ctrl_size": 3, "seed": 1})
    # the control set, drawn independently: rank genes by mean, 4 equal bins, 3 per signature gene's bin
    means = a.mean(0)
    order = np.argsort(means, kind="stable")
    bin_of = np.empty(a.shape[1], int)
    bin_of[order] = np.arange(a.shape[1]) * 4 // a.shape[1]
    ctrl = control_genes(means, cols, pool=np.ones(a.shape[1], bool), n_bins=4, ctrl_size=3, seed=1)
    assert not set(ctrl) & set(cols)
    assert set(bin_of[ctrl]) <= set(bin_of[cols])
    for b in set(bin_of[cols]):
        in_bin = [g for g in ctrl if bin_of[g] == b]
        assert len(in_bin) == min(3, int(((bin_of == b) & ~np.isin(np.arange(a.shape[1]), cols)).sum()))
    sig, bg = a[:, cols].mean(1), a[:, ctrl].mean(1)
    expected = sig - bg if mode == "control_diff" else sig / bg
    np.testing.assert_allclose(adata.obs["score"], expected, rtol=1e-6)
    opts = adata.uns["scsig"]["scores"]["score"]["signatures"]["signature"]["mode_options"]
    assert opts["n_control_genes"] == len(ctrl)


def test_control_genes_respect_pool():
    means = np.arange(20, dtype=float)
    pool = np.ones(20, bool)
    pool[[1, 2, 3]] = False
    ctrl = control_genes(means, np.array([0]), pool=pool, n_bins=2, ctrl_size=50, seed=0)
    assert set(ctrl) == set(range(4, 12))  # bin 0 of the 17 eligible genes: ranks 0-8, i.e. gene 0 and 4..11


def test_rank_ties_and_zero():
    from scsig.tl._score_modes import rank_matrix

    x = sparse.csr_matrix(np.array([[3.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 5.0, 0.0]]))
    r = rank_matrix(x, 2).toarray()
    np.testing.assert_allclose(r[0], [1.0, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(r[1], 0.0)
    assert r[2, 2] == 1.0
    assert sorted(r[2, :2]) == [0.0, 0.5]  # a tie takes ranks 2 and 3 in some order


@pytest.mark.parametrize("mode", MODES)
def test_modes_h5ad_roundtrip_and_several(attributed, tmp_path, mode):
    adata = attributed
    sg.tl.score(adata, {"a": GENES, "b": ["g1", "g2"]}, mode=mode)
    one = sg.tl.score(adata, ["g1", "g2"], mode=mode, key_added="single", copy=True)
    np.testing.assert_allclose(adata.obs["score_b"], one.obs["single"])  # per-signature caching changes nothing
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["scsig"]["scores"]["score"]["mode"] == mode
    np.testing.assert_allclose(back.obs["score_a"], adata.obs["score_a"])


def test_gene_order_does_not_matter(attributed):
    adata = attributed
    for mode in MODES:
        sg.tl.score(adata, GENES, mode=mode, key_added="x")
        sg.tl.score(adata, GENES[::-1], mode=mode, key_added="y")
        np.testing.assert_allclose(adata.obs["x"], adata.obs["y"], err_msg=mode)


def test_depth_spread_classic_falls_top_does_not():
    """A cell that detects many extra small genes: the classic score falls, the top score stays."""
    base = np.zeros((1, 50))
    base[0, :5] = [40, 30, 20, 10, 5]
    deep = base.copy()
    deep[0, 5:] = 0.1
    x = np.vstack([base, deep])
    x = x / x.sum(1, keepdims=True) * 1000
    adata = ad.AnnData(X=np.zeros_like(x), layers={"attr": x.astype(np.float32)})
    adata.var_names = [f"g{i}" for i in range(50)]
    adata.uns["scsig"] = {"layers": {"attr": {}}}
    sg.tl.score(adata, ["g0", "g1"], layer="attr", mode="classic", key_added="classic")
    sg.tl.score(adata, ["g0", "g1"], layer="attr", mode="top", mode_kwds={"top_k": 5}, key_added="top")
    assert adata.obs["classic"].iloc[1] < adata.obs["classic"].iloc[0]
    np.testing.assert_allclose(adata.obs["top"].iloc[1], adata.obs["top"].iloc[0], rtol=1e-5)


@pytest.mark.parametrize(
    ("mode", "kwds", "match"),
    [
        ("average", None, "mode must be one of"),
        ("top", {"max_rank": 3}, "do not apply to mode='top'"),
        ("classic", {"top_k": 3}, "do not apply"),
        ("top", {"top_k": 0}, "positive integer"),
        ("rank", {"max_rank": 2.5}, "positive integer"),
        ("control_diff", {"seed": -1}, "non-negative integer"),
    ],
)
def test_bad_mode_errors(attributed, mode, kwds, match):
    before = attributed.obs.copy()
    with pytest.raises(ValueError, match=match):
        sg.tl.score(attributed, GENES, mode=mode, mode_kwds=kwds)
    assert attributed.obs.equals(before)


def test_control_mode_without_controls(attributed):
    adata = attributed
    with pytest.raises(ValueError, match="No control genes"):
        sg.tl.score(adata, list(adata.var_names), mode="control_diff")


def _wide_attributions(n_obs=80, n_genes=900, seed=0):
    """Attribution-like rows summing to 1,000; most cells have 350-800 non-zero genes, some at most 300."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_obs, n_genes), dtype=np.float32)
    for i in range(n_obs):
        n = rng.integers(350, 800) if i % 5 else rng.integers(50, 300)
        cols = rng.choice(n_genes, size=n, replace=False)
        x[i, cols] = rng.gamma(0.6, 1.0, size=n) + 0.001
    x = x / x.sum(1, keepdims=True) * 1000
    adata = ad.AnnData(X=np.zeros_like(x), layers={"attr_ig": sparse.csr_matrix(x.astype(np.float32))})
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(n_obs)]
    adata.uns["scsig"] = {"layers": {"attr_ig": {"target_sum": 1000.0}}}
    return adata


def _numpy_top_default(a, cols, weights, target_sum=1000.0, k=300):
    """Rescale each row so its k largest values sum to target_sum (rows with <= k values unchanged), weighted mean."""
    out = np.empty(a.shape[0])
    for i, row in enumerate(a):
        nonzero = row[row != 0]
        if nonzero.size > k:
            row = row * target_sum / np.sort(nonzero)[::-1][:k].sum()
        out[i] = row[cols] @ weights / weights.sum()
    return out


def test_top_matches_numpy_on_wide_cells():
    adata = _wide_attributions()
    a = adata.layers["attr_ig"].toarray().astype(np.float64)
    assert ((a != 0).sum(1) > 300).mean() > 0.7  # the rescaling is exercised
    genes = ["g3", "g100", "g250", "g777", "g11"]
    w = np.array([1.0, 2.0, 0.5, 1.5, 3.0])
    cols = _cols(adata, genes)
    sg.tl.score(adata, dict(zip(genes, w, strict=True)), mode="top")
    assert adata.uns["scsig"]["scores"]["score"]["mode"] == "top"
    assert adata.uns["scsig"]["scores"]["score"]["signatures"]["signature"]["mode_options"] == {"top_k": 300}
    expected = _numpy_top_default(a, cols, w)
    np.testing.assert_allclose(adata.obs["score"], expected, rtol=1e-6)
    # it differs from the classic score where cells have more than 300 attributions
    sg.tl.score(adata, dict(zip(genes, w, strict=True)), mode="classic", key_added="classic")
    classic = a[:, cols] @ w / w.sum()
    np.testing.assert_allclose(adata.obs["classic"], classic, rtol=1e-6)
    wide = (a != 0).sum(1) > 300
    assert np.all(np.abs(adata.obs["score"].to_numpy()[wide] / classic[wide] - 1) > 1e-3)
    np.testing.assert_allclose(adata.obs["score"].to_numpy()[~wide], classic[~wide], rtol=1e-6)


def test_default_is_cosine_and_matches_numpy():
    adata = _wide_attributions()
    a = adata.layers["attr_ig"].toarray().astype(np.float64)
    genes = ["g3", "g100", "g250", "g777", "g11"]
    w = np.array([1.0, 2.0, 0.5, 1.5, 3.0])
    sg.tl.score(adata, dict(zip(genes, w, strict=True)))
    assert adata.uns["scsig"]["scores"]["score"]["mode"] == "cosine"
    assert "mode_options" not in adata.uns["scsig"]["scores"]["score"]["signatures"]["signature"]
    expected = _numpy_cosine(a, _cols(adata, genes), w)
    np.testing.assert_allclose(adata.obs["score"], expected, rtol=1e-6)
    # hits on the default score are the hits of the numpy score
    sg.tl.hits(adata, "score", cut=80, key_added="hit")
    np.testing.assert_array_equal(adata.obs["hit"].to_numpy(), expected >= np.percentile(expected, 80))


def test_compare_scores_follows_the_default_mode():
    adata = _wide_attributions(seed=1)
    rng = np.random.default_rng(1)
    adata.X = sparse.csr_matrix(rng.poisson(1.0, adata.shape).astype(np.float32))
    adata.obs["group"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    genes = ["g3", "g100", "g250"]
    sg.tl.compare_scores(adata, genes, contrast="group", positive="a", methods=["attribution"], min_cells=3)
    sg.tl.score(adata, genes, key_added="direct")
    np.testing.assert_array_equal(adata.obs["compare_attribution"], adata.obs["direct"])
    assert adata.uns["scsig"]["compare"]["compare"]["mode"] == "cosine"
    sg.tl.compare_scores(
        adata,
        genes,
        contrast="group",
        positive="a",
        methods=["attribution"],
        min_cells=3,
        mode="classic",
        key_added="c",
    )
    a = adata.layers["attr_ig"].toarray().astype(np.float64)
    np.testing.assert_allclose(adata.obs["c_attribution"], a[:, _cols(adata, genes)].mean(1), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_sums_against_sorting(dtype):
    """The compiled top-k sums equal a sort, on ties, ordered rows, rows just above k and random rows."""
    from scsig.tl._score_modes import row_totals_and_tops

    rng = np.random.default_rng(3)
    k = 300
    rows = [
        np.ones(1000),
        np.arange(1000.0),
        np.arange(1000.0)[::-1],
        rng.random(k + 1),
        np.r_[np.zeros(700), np.full(300, 2.0)],
        np.r_[np.full(900, 1e-6), np.full(5, 10.0)],
        -rng.gamma(0.5, 1.0, 2500),  # absolute values count
        np.zeros(1000),
        rng.random(k),
    ]
    dense = np.zeros((len(rows), 2600))
    for i, r in enumerate(rows):
        dense[i, : r.size] = r
    totals, tops = row_totals_and_tops(sparse.csr_matrix(dense.astype(dtype)), k)
    a = np.abs(dense.astype(dtype).astype(np.float64))
    np.testing.assert_allclose(totals, a.sum(1), rtol=1e-9)
    np.testing.assert_allclose(tops, np.sort(a, 1)[:, ::-1][:, :k].sum(1), rtol=1e-9)


def test_top_warns_when_most_cells_detect_at_most_top_k_genes():
    wide = _wide_attributions()  # 80 % of the cells detect 350-800 genes: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sg.tl.score(wide, ["g3", "g100"], mode="top")
    a = wide.layers["attr_ig"].toarray()
    narrow = wide.copy()
    keep = np.zeros_like(a, dtype=bool)  # every cell keeps at most its 120 largest attributions
    for i, row in enumerate(a):
        keep[i, np.argsort(row)[::-1][:120]] = True
    narrow.layers["attr_ig"] = sparse.csr_matrix(
        np.where(keep, a, 0) / np.where(keep, a, 0).sum(1, keepdims=True) * 1000
    )
    median = int(np.median(np.asarray((narrow.layers["attr_ig"] != 0).sum(1))))
    with pytest.warns(UserWarning, match=rf"100% of the cells .*median {median}.*'top_k': {median // 2}"):
        sg.tl.score(narrow, ["g3", "g100"], mode="top")
    # the warning tells the truth: top equals classic there
    sg.tl.score(narrow, ["g3", "g100"], mode="classic", key_added="classic")
    np.testing.assert_allclose(narrow.obs["score"], narrow.obs["classic"], rtol=1e-9)
    # a top_k below the cells' detected genes is taken silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sg.tl.score(narrow, ["g3", "g100"], mode="top", mode_kwds={"top_k": 60}, key_added="top60")
    # the default mode needs no top_k and does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sg.tl.score(narrow, ["g3", "g100"], key_added="default")
    # a layer of at most top_k genes (a small model) is not reported
    small = narrow[:, :300].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sg.tl.score(small, ["g3", "g100"], mode="top", key_added="small")


def test_cosine_is_a_cosine():
    adata = _wide_attributions(n_obs=20)
    genes = {"g3": 1.0, "g100": 2.0, "g7": 0.5}
    cols = _cols(adata, list(genes))
    w = np.array(list(genes.values()))
    a = adata.layers["attr_ig"].toarray().astype(np.float64)
    # cell 0 attributes exactly in proportion to the weights: cosine 1; cell 1 to none of them: 0
    a[0] = 0.0
    a[0, cols] = w / w.sum() * 1000
    a[1, cols] = 0.0
    adata.layers["attr_ig"] = sparse.csr_matrix(a.astype(np.float32))
    sg.tl.score(adata, genes, mode="cosine")
    score = adata.obs["score"].to_numpy()
    np.testing.assert_allclose(score, _numpy_cosine(a, cols, w), rtol=1e-6)
    assert score[0] == pytest.approx(1.0, rel=1e-6)
    assert score[1] == 0.0
    assert np.all((score >= 0) & (score <= 1 + 1e-9))
    # a cell's scale does not matter, and many small added attributions barely move it (unlike classic)
    wider = a.copy()
    wider[2] *= 7.0
    rng = np.random.default_rng(0)
    empty = np.flatnonzero(a[3] == 0)[:400]
    wider[3, empty] = rng.uniform(0, a[3].max() * 0.05, size=empty.size)
    adata.layers["attr_ig"] = sparse.csr_matrix(wider.astype(np.float32))
    sg.tl.score(adata, genes, mode="cosine", key_added="wider")
    sg.tl.score(adata, genes, mode="classic", key_added="classic_wider")
    new = adata.obs["wider"].to_numpy()
    assert new[2] == pytest.approx(score[2], rel=1e-5)
    classic_drop = 1 - (wider[3, cols] @ w / wider[3].sum()) / (a[3, cols] @ w / a[3].sum())
    assert classic_drop > 0.05  # the classic share does drop
    assert abs(new[3] / score[3] - 1) < classic_drop / 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_norms_against_numpy(dtype):
    from scsig.tl._score_modes import row_norms

    rng = np.random.default_rng(5)
    dense = rng.random((30, 50)) * (rng.random((30, 50)) < 0.3)
    dense[3] = 0.0  # an empty row
    dense[4, :] = 1e-20  # tiny values: float64 accumulation
    x = sparse.csr_matrix(dense.astype(dtype))
    expected = np.sqrt((dense.astype(dtype).astype(np.float64) ** 2).sum(1))
    np.testing.assert_allclose(row_norms(x), expected, rtol=1e-12)
    np.testing.assert_allclose(row_norms(x.toarray()), expected, rtol=1e-12)
    np.testing.assert_allclose(row_norms(x.tocsc()), expected, rtol=1e-12)
    assert row_norms(x)[3] == 0.0


def test_detected_counts_ignore_stored_zeros():
    from scsig.tl._score_modes import detected_counts

    dense = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    x = sparse.csr_matrix(dense)
    x.data[0] = 0.0  # a stored zero in row 0
    x.indptr = x.indptr.copy()
    expected = np.array([1, 0, 2])
    np.testing.assert_array_equal(detected_counts(x), expected)
    np.testing.assert_array_equal(detected_counts(x.tocsc()), expected)
    np.testing.assert_array_equal(detected_counts(x.toarray()), expected)


@pytest.mark.parametrize("n_bins", [10**6, 40])
def test_too_many_control_bins_is_a_clear_error(attributed, n_bins):
    """More bins than genes used to end in "the signature covers every eligible gene", which was not the problem."""
    before = attributed.obs.copy()
    with pytest.raises(ValueError, match=rf"mode_kwds\['n_bins'\]={n_bins} is too many bins for the \d+ genes"):
        sg.tl.score(attributed, GENES, mode="control_diff", mode_kwds={"n_bins": n_bins})
    assert attributed.obs.equals(before)
    sg.tl.score(attributed, GENES, mode="control_diff", mode_kwds={"n_bins": 4})  # a sensible value still works
