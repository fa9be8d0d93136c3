from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import IntegratedGradients
from scipy import sparse

import scsig as sg
from scsig.tl import DegenerateAttributionError


class _Net(torch.nn.Module):
    """The published SCimilarity encoder rebuilt independently of scsig, from the checkpoint's keys."""

    def __init__(self, state):
        super().__init__()
        linear = sorted(k for k in state if k.endswith(".1.weight"))
        blocks = []
        for k in linear:
            out, inp = state[k].shape
            blocks.append(
                torch.nn.Sequential(
                    torch.nn.Dropout(0.4), torch.nn.Linear(inp, out), torch.nn.BatchNorm1d(out), torch.nn.PReLU()
                )
            )
        last = state[f"network.{len(linear)}.weight"]
        blocks.append(torch.nn.Linear(last.shape[1], last.shape[0]))
        self.network = torch.nn.ModuleList(blocks)
        self.load_state_dict(state)
        self.eval()

    def forward(self, x):
        for layer in self.network:
            x = layer(x)
        return torch.nn.functional.normalize(x, p=2, dim=1)


class _SelfSimilarity(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, z):
        return torch.sum(torch.abs(z * self.net(x)), dim=1, keepdim=True)


def _direct_captum_ig(adata, folder, n_steps=50):
    """Reference computation: numpy preprocessing + captum IG on an independently built module."""
    state = torch.load(folder / "encoder.ckpt", weights_only=True)["state_dict"]
    genes = (folder / "gene_order.tsv").read_text().split()
    dense = pd.DataFrame(adata.X.toarray().astype(np.float64), columns=adata.var_names)
    aligned = dense.reindex(columns=genes, fill_value=0.0).to_numpy()
    totals = aligned.sum(1, keepdims=True)
    x = np.log1p(np.divide(aligned * 1e4, totals, out=np.zeros_like(aligned), where=totals > 0))
    inputs = torch.tensor(x, dtype=torch.float32)
    wrapper = _SelfSimilarity(_Net(state))
    with torch.no_grad():
        z = wrapper.net(inputs)
    attr, delta = IntegratedGradients(wrapper).attribute(
        inputs.requires_grad_(),
        baselines=torch.zeros_like(inputs),
        target=0,
        additional_forward_args=(z,),
        n_steps=n_steps,
        return_convergence_delta=True,
    )
    raw = attr.detach().numpy().astype(np.float64)
    normed = np.abs(raw) / np.abs(raw).sum(1, keepdims=True) * 1000
    # back onto adata.var
    return pd.DataFrame(normed, columns=genes).reindex(columns=adata.var_names, fill_value=0).to_numpy(), raw, delta


@pytest.mark.parametrize("engine", ["auto", "captum"])
def test_ig_equals_direct_captum(toy, scim_folder, engine):
    adata, _ = toy
    model = sg.models.load(scim_folder)
    sg.tl.attribute(adata, model, engine=engine, batch_size=17)
    expected, _, _ = _direct_captum_ig(adata, scim_folder)
    got = adata.layers["attr_ig"]
    assert sparse.isspmatrix_csr(got)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.toarray(), expected, rtol=1e-4, atol=1e-3)


def test_ig_completeness(toy, scim_folder):
    """Sum of raw IG attributions = t(x) - t(0), within captum's own convergence delta."""
    adata, _ = toy
    model = sg.models.load(scim_folder)
    prepared = sg.pp.prepare(adata, model)
    module = sg.attribution.TargetModule(model.encoder, "self_similarity")
    from scsig.attribution._engine import compute_batch, pick_engine

    engine = pick_engine(model, "ig", module, "auto")
    raw, t_in, t_base = compute_batch(
        engine, module, model, prepared.X, method="ig", n_steps=50, device=torch.device("cpu")
    )
    _, _, delta = _direct_captum_ig(adata, scim_folder)
    gap = np.abs(np.asarray(raw).sum(1) - (t_in - t_base))
    assert np.all(gap <= np.abs(delta.numpy()) * 1.5 + 1e-4)
    assert np.all(t_in - t_base > 0)


def test_rows_sum_and_zero_genes(toy):
    adata, model = toy
    x = adata.X.toarray()
    x[:, 3] = 0  # a gene no cell expresses
    adata.X = sparse.csr_matrix(x)
    sg.tl.attribute(adata, model, target_sum=500)
    layer = adata.layers["attr_ig"]
    np.testing.assert_allclose(np.asarray(layer.sum(1)).ravel(), 500, rtol=1e-5)
    assert layer[:, 3].nnz == 0
    # attributions only where the cell has counts
    assert np.count_nonzero(layer.toarray()[adata.X.toarray() == 0]) == 0
    assert (layer.data > 0).all()


def test_genes_outside_model_get_zero(toy):
    adata, model = toy
    extra = ad.AnnData(
        sparse.csr_matrix(np.ones((adata.n_obs, 2), dtype=np.int32)),
        obs=adata.obs,
        var=pd.DataFrame(index=["unknownA", "unknownB"]),
    )
    wide = ad.concat([adata, extra], axis=1, merge="first")
    sg.tl.attribute(wide, model)
    assert wide.layers["attr_ig"][:, -2:].nnz == 0
    assert wide.var["attr_ig_in_model"].tolist() == [True] * adata.n_vars + [False, False]


def test_provenance_and_h5ad_roundtrip(toy, tmp_path):
    adata, model = toy
    sg.tl.attribute(adata, model, n_steps=20)
    rec = adata.uns["scsig"]["layers"]["attr_ig"]
    assert rec["method"] == "ig"
    assert rec["n_steps"] == 20
    assert rec["target"] == "self_similarity"
    assert rec["target_sum"] == 1000.0
    assert rec["gene_order_hash"] == model.gene_order_hash
    assert rec["model"]["name"] == "toy"
    assert rec["scsig_version"] == sg.__version__
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["scsig"]["layers"]["attr_ig"]["gene_order_hash"] == model.gene_order_hash
    assert (back.layers["attr_ig"] != adata.layers["attr_ig"]).nnz == 0


def test_copy_and_key_added(toy):
    adata, model = toy
    out = sg.tl.attribute(adata, model, copy=True, key_added="my_attr")
    assert "my_attr" in out.layers
    assert "my_attr" not in adata.layers
    assert "scsig" not in adata.uns


def test_view_input(toy):
    adata, model = toy
    view = adata[:20]
    sg.tl.attribute(view, model)
    assert view.layers["attr_ig"].shape == (20, adata.n_vars)
    assert "attr_ig" not in adata.layers


@pytest.mark.parametrize("fmt", ["dense", "csc", "csr"])
def test_input_formats(toy, fmt):
    adata, model = toy
    ref = sg.tl.attribute(adata, model, copy=True).layers["attr_ig"]
    x = adata.X
    adata.X = x.toarray() if fmt == "dense" else (x.tocsc() if fmt == "csc" else x)
    sg.tl.attribute(adata, model)
    np.testing.assert_allclose(adata.layers["attr_ig"].toarray(), ref.toarray(), rtol=1e-5, atol=1e-5)


def test_counts_layer(toy):
    adata, model = toy
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.astype(np.float32)
    adata.X.data = np.log1p(adata.X.data)
    sg.tl.attribute(adata, model, layer="counts")
    assert adata.uns["scsig"]["layers"]["attr_ig"]["input_layer"] == "counts"


def _unchanged(a, b):
    assert set(a.layers) == set(b.layers)
    assert list(a.obs.columns) == list(b.obs.columns)
    assert list(a.var.columns) == list(b.var.columns)
    assert set(a.uns) == set(b.uns)


@pytest.mark.parametrize(
    ("mutate", "kwargs", "exc", "match"),
    [
        (lambda a: a.X.data.__setitem__(0, -3), {}, ValueError, "negative"),
        (lambda a: a.X.data.__setitem__(0, np.nan), {}, ValueError, "NaN"),
        (lambda a: a.X.data.__setitem__(0, np.inf), {}, ValueError, "infinite"),
        (lambda a: a.X.data.__setitem__(0, 0.25), {}, ValueError, "non-integer"),
        (lambda a: setattr(a, "var_names", [f"x{i}" for i in range(a.n_vars)]), {}, ValueError, "Only 0 of"),
        (lambda a: None, {"layer": "counts"}, KeyError, "Layer 'counts' not found"),
        (lambda a: None, {"method": "shap"}, ValueError, "Unknown attribution method"),
        (lambda a: None, {"target": "cosine"}, ValueError, "Unknown attribution target"),
        (lambda a: None, {"engine": "gpu"}, ValueError, "engine must be"),
    ],
)
def test_bad_inputs(toy, mutate, kwargs, exc, match):
    adata, model = toy
    adata.X = adata.X.astype(np.float32)
    mutate(adata)
    before = adata.copy()
    with pytest.raises(exc, match=match):
        sg.tl.attribute(adata, model, **kwargs)
    _unchanged(adata, before)


def test_duplicate_var_names(toy):
    adata, model = toy
    names = adata.var_names.tolist()
    names[1] = names[0]
    adata.var_names = names
    with pytest.raises(ValueError, match="duplicate"):
        sg.tl.attribute(adata, model)
    assert "attr_ig" not in adata.layers


def test_zero_count_cells_warn(toy):
    adata, model = toy
    x = adata.X.toarray()
    x[2, :] = 0
    adata.X = sparse.csr_matrix(x)
    with pytest.warns(UserWarning, match="1 cells have zero counts"):
        sg.tl.attribute(adata, model)
    assert adata.layers["attr_ig"][2].nnz == 0


@pytest.mark.parametrize("method", ["ixg", "dl"])
def test_degenerate_default_target(toy, method):
    adata, model = toy
    with pytest.raises(DegenerateAttributionError, match="degenerate"):
        sg.tl.attribute(adata, model, method=method)
    assert f"attr_{method}" not in adata.layers
    with pytest.warns(UserWarning, match="degenerate"):
        sg.tl.attribute(adata, model, method=method, on_degenerate="warn")


@pytest.mark.parametrize(
    ("case", "match"),
    [("degenerate", "degenerate"), ("gap", "completeness gap"), ("empty", "zero counts")],
)
def test_warnings_point_at_the_caller(toy, case, match):
    """Each of attribute's warnings names the line that called it, however deep inside it is raised."""
    adata, model = toy
    kwargs = {"method": "ixg", "on_degenerate": "warn"} if case == "degenerate" else {}
    if case == "gap":
        kwargs = {"n_steps": 5}
    if case == "empty":
        x = adata.X.toarray()
        x[2, :] = 0
        adata.X = sparse.csr_matrix(x)
    with pytest.warns(UserWarning, match=match) as record:
        sg.tl.attribute(adata, model, **kwargs)
    ours = [w for w in record if match in str(w.message)]
    assert [w.filename for w in ours] == [__file__]


@pytest.mark.parametrize("method", ["ixg", "dl"])
def test_embedding_distance_target_is_not_degenerate(toy, method):
    adata, model = toy
    sg.tl.attribute(adata, model, method=method, target="embedding_distance")
    layer = adata.layers[f"attr_{method}"]
    np.testing.assert_allclose(np.asarray(layer.sum(1)).ravel(), 1000, rtol=1e-5)
    assert adata.uns["scsig"]["layers"][f"attr_{method}"]["target"] == "embedding_distance"


def test_ig_embedding_distance_completeness(toy):
    adata, model = toy
    prepared = sg.pp.prepare(adata, model)
    module = sg.attribution.TargetModule(model.encoder, "embedding_distance")
    inputs = torch.tensor(prepared.X.toarray())
    raw, t_in, t_base = sg.attribution.captum_attributions(module, inputs, method="ig", n_steps=200)
    np.testing.assert_allclose(raw.sum(1).numpy(), (t_in - t_base).numpy(), rtol=2e-2, atol=1e-3)
    np.testing.assert_allclose(t_base.numpy(), 0, atol=1e-6)


def test_from_module_captum_path(toy):
    adata, _ = toy
    genes = adata.var_names.tolist()
    net = torch.nn.Sequential(torch.nn.Linear(len(genes), 6), torch.nn.Softplus(), torch.nn.Linear(6, 3))
    model = sg.models.from_module(net, genes)
    sg.tl.attribute(adata, model)
    rec = adata.uns["scsig"]["layers"]["attr_ig"]
    assert rec["engine"] == "captum"
    np.testing.assert_allclose(np.asarray(adata.layers["attr_ig"].sum(1)).ravel(), 1000, rtol=1e-5)


def test_model_path(toy, scim_folder):
    adata, _ = toy
    sg.tl.attribute(adata, str(scim_folder))
    assert adata.uns["scsig"]["layers"]["attr_ig"]["model"]["name"] == "model"


def test_mudata(toy):
    mudata = pytest.importorskip("mudata")
    adata, model = toy
    mudata.set_options(pull_on_update=False)
    mdata = mudata.MuData({"rna": adata})
    sg.tl.attribute(mdata, model)
    assert "attr_ig" in mdata.mod["rna"].layers
    sg.tl.score(mdata, ["g0", "g1"])
    assert "score" in mdata.mod["rna"].obs
    with pytest.raises(KeyError, match="no modality 'prot'"):
        sg.tl.attribute(mdata, model, mod="prot")
    out = sg.tl.score(mdata, ["g0"], key_added="s2", copy=True)
    assert "s2" in out.mod["rna"].obs
    assert "s2" not in mdata.mod["rna"].obs
