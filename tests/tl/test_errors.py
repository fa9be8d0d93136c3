"""Bad input to the tl functions: clear errors, and the user's AnnData left alone where nothing is documented."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch

import scsig as sg

GENES = ["g0", "g1", "g2", "g3", "g4"]
METHODS = ["attribution", "score_genes"]


@pytest.fixture
def attributed(toy):
    """The toy data with an IG layer, a numeric condition and a one-level column."""
    adata, model = toy
    sg.tl.attribute(adata, model)
    adata.obs["num"] = np.arange(adata.n_obs) % 3
    adata.obs["one"] = "x"
    return adata


@pytest.fixture
def scored(attributed):
    sg.tl.score(attributed, GENES)
    return attributed


# attribute


@pytest.mark.parametrize("target_sum", [0, -1.0, np.nan])
def test_attribute_rejects_nonpositive_target_sum(toy, target_sum):
    adata, model = toy
    with pytest.raises(ValueError, match="target_sum must be (above 0|a finite number)"):
        sg.tl.attribute(adata, model, target_sum=target_sum)
    assert "attr_ig" not in adata.layers


def test_attribute_rejects_zero_batch_size(toy):
    adata, model = toy
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        sg.tl.attribute(adata, model, batch_size=0)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("n_steps", None, TypeError),
        ("n_steps", 2.5, TypeError),
        ("n_steps", 10**5, ValueError),  # the Gauss-Legendre nodes alone would need 74.5 GiB
        ("batch_size", 2.5, TypeError),
        ("batch_size", "8", TypeError),
        ("target_sum", "1000", TypeError),
        ("min_overlap", "10", TypeError),
        ("min_overlap", -1, ValueError),
    ],
)
def test_attribute_options_of_the_wrong_type_or_size_name_the_option(toy, option, value, error):
    adata, model = toy
    with pytest.raises(error, match=f"{option} must be"):
        sg.tl.attribute(adata, model, **{option: value})
    assert "attr_ig" not in adata.layers


# score


def test_score_numeric_series_is_gene_weights(attributed):
    weights = {"g0": 1.0, "g1": 3.0, "g2": 0.5}
    sg.tl.score(attributed, weights, key_added="from_dict")
    sg.tl.score(attributed, pd.Series(weights), key_added="from_series")
    np.testing.assert_array_equal(attributed.obs["from_series"], attributed.obs["from_dict"])
    rec = attributed.uns["scsig"]["scores"]["from_series"]["signatures"]["signature"]
    assert rec["genes"] == ["g0", "g1", "g2"]


def test_score_copy_leaves_a_view_alone(attributed):
    view = attributed[attributed.obs["group"] == "a"]
    out = sg.tl.score(view, GENES, copy=True)
    assert view.is_view
    assert "score" in out.obs
    assert "score" not in view.obs


def test_score_warns_on_a_layer_attribute_did_not_write(attributed):
    attributed.layers["counts"] = attributed.X.copy()
    with pytest.warns(UserWarning, match="'counts' has no record"):
        sg.tl.score(attributed, GENES, layer="counts")


# hits


def test_hits_copy_leaves_a_view_alone(scored):
    view = scored[scored.obs["group"] == "a"]
    sg.tl.hits(view, "score", copy=True)
    assert view.is_view


def test_hits_refuses_to_overwrite_its_scores(scored):
    before = scored.obs["score"].copy()
    with pytest.raises(ValueError, match="overwrite the scores"):
        sg.tl.hits(scored, "score", key_added="score")
    pd.testing.assert_series_equal(scored.obs["score"], before)


def test_hits_warns_on_a_fraction_as_percentile(scored):
    with pytest.warns(UserWarning, match="mode='quantile'"):
        sg.tl.hits(scored, "score", mode="percentile", cut=0.9)


def test_hits_no_cells(scored):
    with pytest.raises(ValueError, match="no cells"):
        sg.tl.hits(scored[:0].copy(), "score")


# compare_scores


def _compare(adata, genes=GENES, **kwargs):
    kwargs = {"contrast": "group", "positive": "b", "methods": METHODS} | kwargs
    return sg.tl.compare_scores(adata, genes, **kwargs)


def test_compare_one_gene_as_a_string(attributed):
    one = _compare(attributed, "g0")
    assert (one["method"] == "attribution").any()
    with pytest.raises(TypeError, match="one signature"):
        _compare(attributed, {"a": ["g0"], "b": ["g1"]})


def test_compare_duplicate_genes(attributed):
    with pytest.raises(ValueError, match="more than once"):
        _compare(attributed, ["g0", "g0", "g1"])


def test_compare_no_gene_in_data(attributed):
    with pytest.raises(ValueError, match="None of the 2 genes of the signature is in adata.var_names"):
        _compare(attributed, ["G0", "G1"])


def test_compare_numeric_positive_label(attributed):
    table = _compare(attributed, contrast="num", positive=1)
    assert (table["n_positive"] == int((attributed.obs["num"] == 1).sum())).all()


def test_compare_unknown_negative_label(attributed):
    with pytest.raises(ValueError, match=r"negative label\(s\) \['A'\] not found"):
        _compare(attributed, negative="A")


def test_compare_label_on_both_sides(attributed):
    with pytest.raises(ValueError, match="both positive and negative"):
        _compare(attributed, negative=["a", "b"])


def test_compare_one_level_contrast(attributed):
    with pytest.raises(ValueError, match="No negative cells"):
        _compare(attributed, contrast="one", positive="x")


def test_compare_one_method_as_a_string(attributed):
    table = _compare(attributed, methods="attribution")
    assert table["method"].unique().tolist() == ["attribution"]


def test_compare_refuses_normalized_counts(attributed):
    sc.pp.normalize_total(attributed)
    sc.pp.log1p(attributed)
    with pytest.raises(ValueError, match="not raw counts"):
        _compare(attributed)


def test_compare_backed(attributed, tmp_path):
    path = tmp_path / "a.h5ad"
    attributed.write_h5ad(path)
    expected = _compare(attributed)
    backed = ad.read_h5ad(path, backed="r")
    got = _compare(backed)
    pd.testing.assert_frame_equal(got, expected)


def _duplicate_a_gene(adata):
    adata.var_names = [*adata.var_names[:-1], adata.var_names[0]]


def test_score_duplicate_var_names(attributed):
    _duplicate_a_gene(attributed)
    with pytest.raises(ValueError, match="var_names_make_unique"):
        sg.tl.score(attributed, ["g1", "g2"])


def test_compare_duplicate_var_names(attributed):
    _duplicate_a_gene(attributed)
    with pytest.raises(ValueError, match="var_names_make_unique"):
        _compare(attributed, ["g1", "g2", "g3"])


def test_attribute_refuses_to_overwrite_its_counts(toy):
    adata, model = toy
    adata.layers["counts"] = adata.X.copy()
    with pytest.raises(ValueError, match="overwrite the counts layer"):
        sg.tl.attribute(adata, model, layer="counts", key_added="counts")
    assert (adata.layers["counts"] != adata.X).nnz == 0


def test_compare_cells_without_labels(attributed):
    attributed.obs["ct"] = pd.Categorical(np.where(np.arange(attributed.n_obs) % 2, "T", "B"))
    attributed.obs.loc[attributed.obs_names[:4], ["group", "ct"]] = np.nan
    table = _compare(attributed, groupby="ct", min_cells=1)
    assert set(table["group"]) == {"all", "B", "T"}
    pooled = table.loc[table["group"] == "all"].iloc[0]
    assert pooled["n_negative"] == int((attributed.obs["group"] == "a").sum())


def test_attribute_never_replaces_what_it_did_not_write(toy):
    adata, model = toy
    adata.layers["counts"] = adata.X.copy()
    with pytest.raises(ValueError, match="would overwrite the counts layer it reads"):
        sg.tl.attribute(adata, model, layer="counts", key_added="counts")
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\] exists and was not written by sg.tl.attribute"):
        sg.tl.attribute(adata, model, key_added="counts")
    adata.obs["qc"] = 1.0
    with pytest.raises(ValueError, match=r"adata.obs\['qc'\] exists and was not written"):
        sg.tl.attribute(adata, model, completeness_key="qc")
    assert (adata.layers["counts"] != adata.X).nnz == 0
    assert (adata.obs["qc"] == 1.0).all()
    sg.tl.attribute(adata, model, n_steps=8, completeness_key="gap")
    sg.tl.attribute(adata, model, n_steps=8, completeness_key="gap")  # its own layer and column: replaced


def test_attribute_on_a_view_says_where_the_result_goes(toy):
    adata, model = toy
    view = adata[:20]
    with pytest.warns(UserWarning, match=r"adata is a view .*\.copy\(\)"):
        sg.tl.attribute(view, model, n_steps=8)
    assert "attr_ig" not in adata.layers


class _Gated(torch.nn.Module):
    """A linear embedding that is NaN (``kind="nan"``) or zero (``"dead"``) for cells with few counts of gene 0."""

    def __init__(self, n_genes, kind):
        super().__init__()
        self.lin = torch.nn.Linear(n_genes, 4)
        self.kind = kind

    def forward(self, x):
        z = self.lin(x)
        gate = x[:, :1] > 1.0
        if self.kind == "nan":
            return torch.where(gate, z, torch.full_like(z, float("nan")))
        if self.kind == "dead":
            return z * gate
        return torch.relu(z - 1e3)  # every cell dead


def test_nan_embeddings_are_refused_and_dead_ones_reported(toy):
    adata, _ = toy
    genes = list(adata.var_names)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="NaN or infinite for .* cells"):
        sg.tl.attribute(adata, sg.models.from_module(_Gated(len(genes), "nan"), genes), n_steps=8)
    with pytest.raises(ValueError, match="No cell has any attribution"):
        sg.tl.attribute(adata, sg.models.from_module(_Gated(len(genes), "all"), genes), n_steps=8)
    assert "attr_ig" not in adata.layers
    with pytest.warns(UserWarning, match="cells with counts have no attribution at all"):
        sg.tl.attribute(adata, sg.models.from_module(_Gated(len(genes), "dead"), genes), n_steps=8)
    rows = np.asarray(adata.layers["attr_ig"].sum(axis=1)).ravel()
    assert adata.uns["scsig"]["layers"]["attr_ig"]["n_cells_without_attribution"] == int((rows == 0).sum()) > 0
