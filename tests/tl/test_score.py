from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scsig as sg


@pytest.fixture
def attributed(toy):
    adata, model = toy
    sg.tl.attribute(adata, model)
    return adata


def _layer(adata):
    return adata.layers["attr_ig"].toarray().astype(np.float64)


def _cols(adata, genes):
    return [adata.var_names.get_loc(g) for g in genes]


GENES = ["g3", "g0", "g7", "g12"]


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
@pytest.mark.parametrize("aggregate", ["mean", "sum"])
def test_matches_numpy(attributed, fmt, aggregate):
    adata = attributed
    dense = _layer(adata)
    layer = adata.layers["attr_ig"]
    adata.layers["attr_ig"] = {"csr": layer, "csc": layer.tocsc(), "dense": layer.toarray()}[fmt]
    sg.tl.score(adata, GENES, aggregate=aggregate, mode="classic")
    sub = dense[:, _cols(adata, GENES)]
    expected = sub.mean(1) if aggregate == "mean" else sub.sum(1)
    np.testing.assert_allclose(adata.obs["score"], expected, rtol=1e-6)
    assert adata.obs["score"].dtype == np.float64


@pytest.mark.parametrize("aggregate", ["mean", "sum"])
def test_weighted(attributed, aggregate):
    adata = attributed
    w = np.array([0.5, 2.0, 1.0, 3.0])
    sg.tl.score(adata, dict(zip(GENES, w, strict=True)), aggregate=aggregate, mode="classic", key_added="w")
    sg.tl.score(adata, GENES, weights=w, aggregate=aggregate, mode="classic", key_added="w2")
    sub = _layer(adata)[:, _cols(adata, GENES)]
    expected = sub @ w / (w.sum() if aggregate == "mean" else 1)
    np.testing.assert_allclose(adata.obs["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(adata.obs["w2"], expected, rtol=1e-6)


def test_gene_order_does_not_matter(attributed):
    adata = attributed
    sg.tl.score(adata, GENES, key_added="a")
    sg.tl.score(adata, GENES[::-1], key_added="b")
    np.testing.assert_array_equal(adata.obs["a"].to_numpy(), adata.obs["b"].to_numpy())


def test_several_signatures(attributed):
    adata = attributed
    sigs = {"up": ["g0", "g1", "g2"], "other": {"g10": 1.0, "g11": 3.0}}
    sg.tl.score(adata, sigs, mode="classic", key_added="sig")
    dense = _layer(adata)
    np.testing.assert_allclose(adata.obs["sig_up"], dense[:, _cols(adata, sigs["up"])].mean(1), rtol=1e-6)
    expected = dense[:, _cols(adata, ["g10", "g11"])] @ np.array([1.0, 3.0]) / 4
    np.testing.assert_allclose(adata.obs["sig_other"], expected, rtol=1e-6)
    assert list(adata.obsm["sig"].columns) == ["up", "other"]
    np.testing.assert_array_equal(adata.obsm["sig"]["up"].to_numpy(), adata.obs["sig_up"].to_numpy())


def test_missing_genes_warn_and_are_recorded(attributed):
    adata = attributed
    with pytest.warns(UserWarning, match="not in adata.var"):
        sg.tl.score(adata, ["g0", "g1", "NOPE"], mode="classic")
    rec = adata.uns["scsig"]["scores"]["score"]["signatures"]["signature"]
    assert rec["missing"] == ["NOPE"]
    assert rec["genes"] == ["g0", "g1"]
    np.testing.assert_allclose(adata.obs["score"], _layer(adata)[:, _cols(adata, ["g0", "g1"])].mean(1))


def test_gene_unknown_to_model_is_missing(toy):
    adata, model = toy
    extra = ad.AnnData(sparse.csr_matrix(np.ones((adata.n_obs, 1), dtype=np.int32)), obs=adata.obs)
    extra.var_names = ["notinmodel"]
    wide = ad.concat([adata, extra], axis=1, merge="first")
    sg.tl.attribute(wide, model)
    with pytest.warns(UserWarning, match="unknown to the model"):
        sg.tl.score(wide, ["g0", "notinmodel"])
    assert wide.uns["scsig"]["scores"]["score"]["signatures"]["signature"]["missing"] == ["notinmodel"]


@pytest.mark.parametrize(
    ("genes", "match"),
    [
        (["g0", "g0"], "more than once"),
        ([], "empty"),
        (["A", "B"], "None of the 2 genes"),
        (42, "pass a gene"),
    ],
)
def test_bad_signatures(attributed, genes, match):
    adata = attributed
    before = adata.copy()
    with pytest.raises((ValueError, TypeError), match=match):
        sg.tl.score(adata, genes)
    assert list(adata.obs.columns) == list(before.obs.columns)
    assert "scores" not in adata.uns["scsig"]


def test_layer_resolution(attributed, toy):
    adata = attributed
    _, model = toy
    sg.tl.attribute(adata, model, method="ixg", target="embedding_distance")
    with pytest.raises(ValueError, match="Several attribution layers"):
        sg.tl.score(adata, GENES)
    sg.tl.score(adata, GENES, layer="attr_ixg")
    with pytest.raises(KeyError, match="not found"):
        sg.tl.score(adata, GENES, layer="attr_dl")
    raw, _ = sg.datasets.toy()
    with pytest.raises(KeyError, match="Run sg.tl.attribute first"):
        sg.tl.score(raw, GENES)


def test_copy_view_and_h5ad(attributed, tmp_path):
    adata = attributed
    out = sg.tl.score(adata, GENES, copy=True)
    assert "score" in out.obs
    assert "score" not in adata.obs
    view = adata[:10]
    sg.tl.score(view, GENES)
    np.testing.assert_allclose(view.obs["score"], out.obs["score"][:10])
    sg.tl.score(adata, {"a": GENES, "b": ["g1"]})
    adata.write_h5ad(tmp_path / "s.h5ad")
    back = ad.read_h5ad(tmp_path / "s.h5ad")
    np.testing.assert_array_equal(back.obs["score_a"], adata.obs["score_a"])
    assert list(back.uns["scsig"]["scores"]["score"]["signatures"]["a"]["genes"]) == GENES


def test_never_densifies(attributed, monkeypatch):
    """The CSR path must not call toarray/todense on the layer."""
    adata = attributed

    def boom(*args, **kwargs):
        raise AssertionError("densified")

    layer = adata.layers["attr_ig"]
    monkeypatch.setattr(type(layer), "toarray", boom)
    monkeypatch.setattr(type(layer), "todense", boom)
    sg.tl.score(adata, GENES)
    assert adata.obs["score"].notna().all()


def test_one_gene_as_a_string(attributed):
    adata = attributed
    sg.tl.score(adata, "g3", mode="classic")
    np.testing.assert_allclose(adata.obs["score"], _layer(adata)[:, _cols(adata, ["g3"])].ravel())
    sg.tl.score(adata, {"one": "g3", "two": ["g3", "g4"]}, mode="classic", key_added="multi")
    np.testing.assert_allclose(adata.obs["multi_one"], adata.obs["score"])


def test_docs_say_scores_are_shares_of_a_fixed_total():
    from pathlib import Path

    assert "shares of a fixed total" in " ".join(sg.tl.score.__doc__.split())
    assert "lowers that cell's other scores" in " ".join(sg.tl.score.__doc__.split())
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "shares of a fixed 1,000 per cell" in readme


def test_key_added_warns_before_replacing_a_column_scsig_did_not_write(attributed):
    import warnings

    adata = attributed
    adata.obs["cell_type"] = "T"
    with pytest.warns(UserWarning, match=r"\['cell_type'\] exist and were not written by scsig"):
        sg.tl.score(adata, ["g0"], key_added="cell_type")
    adata.obs["mine_a"] = 1.0
    with pytest.warns(UserWarning, match=r"\['mine_a'\] exist"):
        sg.tl.score(adata, {"a": ["g0"], "b": ["g1"]}, key_added="mine")
    with warnings.catch_warnings():  # scsig's own columns are replaced silently
        warnings.filterwarnings("error", message=".*not written by scsig")
        sg.tl.score(adata, ["g2"], key_added="cell_type")
        sg.tl.score(adata, {"a": ["g0"], "b": ["g1"]}, key_added="mine")


def test_compare_key_added_must_not_replace_its_inputs(attributed):
    adata = attributed
    adata.obs["c_attribution"] = adata.obs["group"].astype(str)
    with pytest.raises(ValueError, match="which this call reads as contrast"):
        sg.tl.compare_scores(
            adata, ["g0", "g1"], contrast="c_attribution", positive="b", methods=["attribution"], key_added="c"
        )
    with pytest.warns(UserWarning, match=r"\['c_attribution'\] exist and were not written by scsig"):
        sg.tl.compare_scores(
            adata, ["g0", "g1"], contrast="group", positive="b", methods=["attribution"], key_added="c"
        )


def test_score_refuses_what_would_be_silently_wrong(toy):
    adata, model = toy
    sg.tl.attribute(adata, model, progress=False, n_steps=8)
    with pytest.raises(ValueError, match="no cells"):
        sg.tl.score(adata[:0].copy(), ["g0", "g1"])
    broken = adata.copy()
    broken.layers["attr_ig"].data[3] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        sg.tl.score(broken, ["g0", "g1"])
    assert "score" not in broken.obs
    x = adata.layers["attr_ig"]
    first, second = x.indptr[0], x.indptr[0] + 1
    indices = x.indices.copy()
    indices[second] = indices[first]  # cell 0 stores one gene twice
    dup = adata.copy()
    dup.layers["attr_ig"] = sparse.csr_matrix((x.data.copy(), indices, x.indptr.copy()), shape=x.shape)
    with pytest.raises(ValueError, match=r"more than once.*sum_duplicates"):
        sg.tl.score(dup, ["g0", "g1"])
    with pytest.raises(ValueError, match="cannot be stored"):
        sg.tl.score(adata, {".": ["g0"], "b": ["g1"]})
    assert "score" not in adata.obs
