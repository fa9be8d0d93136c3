"""Plans: modes, the builder registry, and the two extension points (covariates, a gene map) against captum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from torch import nn

from scsig.attribution import TargetModule, captum_attributions
from scsig.attribution._fast import attributions_from_plan
from scsig.attribution._fast_targets import fast_target
from scsig.attribution._plan import (
    _BUILDERS,
    FirstAffine,
    Plan,
    build_plan,
    flatten_modules,
    register_plan_builder,
    sequential_plan,
    take_affine,
)
from scsig.models import SCimilarityEncoder

RTOL = 1e-4


def _assert_rows_close(got, ref, rtol=RTOL):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    scale = np.abs(ref).max(axis=1)
    assert (scale > 0).all()
    np.testing.assert_array_less(np.abs(got - ref).max(axis=1) / scale, rtol)


@pytest.mark.parametrize(
    ("hidden", "mode", "tail"),
    [((32, 24), "events", "closed"), ((48,), "events", "autograd"), ((48, 40, 24), "events", "autograd")],
)
def test_scimilarity_modes(helpers, hidden, mode, tail):
    model = helpers.scimilarity_model(300, hidden, 8)
    plan = build_plan(model.encoder)
    assert (plan.mode, plan.tail, plan.normalize) == (mode, tail, True)
    assert len(plan.layers) == len(hidden)
    assert all(layer.piecewise_linear and layer.affine is not None for layer in plan.layers)
    # the layers hold every module above the first affine map, in order
    modules = flatten_modules(model.encoder.network)
    assert plan.upper_modules == modules[len(modules) - len(plan.upper_modules) :]


def test_sequential_modes_and_layers():
    net = nn.Sequential(nn.Linear(20, 10), nn.SELU(), nn.Linear(10, 8), nn.LayerNorm(8), nn.SELU(), nn.Linear(8, 4))
    plan = build_plan(net.eval())
    assert plan.mode == "autograd"
    assert [type(layer.activation) for layer in plan.layers] == [nn.SELU, nn.LayerNorm, nn.SELU]
    assert [layer.affine is not None for layer in plan.layers] == [True, False, True]
    x = torch.randn(5, 20)
    with torch.no_grad():
        h = torch.from_numpy(
            x.double().numpy() @ plan.first.weight_t.astype(np.float64) * plan.first.scale + plan.first.bias
        )
        for m in plan.upper_modules:
            h = m(h.float())
        np.testing.assert_allclose(h.numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
    assert build_plan(net.train()) is None  # training mode: not covered


def test_registry_follows_forward():
    class Override(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    class Plain(nn.Sequential):
        pass

    assert build_plan(Override(nn.Linear(4, 3)).eval()) is None
    assert build_plan(Plain(nn.Linear(4, 3)).eval()) is not None
    assert build_plan(nn.Linear(4, 3)) is None  # no builder registered for a bare Linear
    assert build_plan(SCimilarityEncoder(10, (6,), 4).eval()).normalize


class CovariateEncoder(nn.Module):
    """scVI-style: covariates (a one-hot batch) are concatenated to the input of the first Linear."""

    def __init__(self, n_genes: int, n_cov: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.first = nn.Linear(n_genes + n_cov, hidden)
        self.rest = nn.Sequential(
            nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, latent)
        )

    def forward(self, x, cov):
        return self.rest(self.first(torch.cat([x, cov], dim=1)))


def covariate_plan(enc: CovariateEncoder) -> Plan | None:
    """A plan builder: the first Linear's gene columns are the map, its covariate columns the offset."""
    modules = [enc.first, *flatten_modules(enc.rest)]
    plan = sequential_plan(modules)
    if plan is None:
        return None
    w, _, _, _ = take_affine(modules, 0)
    first = FirstAffine(
        weight_t=np.ascontiguousarray(enc.first.weight[:, : enc.n_genes].detach().T.numpy()),
        scale=plan.first.scale,
        bias=plan.first.bias,
        covariate_weight_t=np.ascontiguousarray(w[:, enc.n_genes :].T.numpy()),
    )
    return Plan(first=first, layers=plan.layers, normalize=False)


class _CovTarget(nn.Module):
    def __init__(self, enc, fn):
        super().__init__()
        self.enc, self.fn = enc, fn

    def forward(self, x, cov, ref):
        return self.fn(self.enc(x, cov), ref).unsqueeze(1)


@pytest.mark.parametrize(
    ("method", "target"), [("ig", "self_similarity"), ("ig", "embedding_distance"), ("ixg", "embedding_distance")]
)
def test_covariates_held_fixed_equal_captum(helpers, monkeypatch, method, target):
    from captum.attr import InputXGradient, IntegratedGradients

    monkeypatch.setitem(_BUILDERS, CovariateEncoder, covariate_plan)
    torch.manual_seed(0)
    enc = helpers.perturb(CovariateEncoder(120, 3, 24, 6))
    plan = build_plan(enc)
    assert plan is not None
    assert plan.mode == "events"
    assert plan.first.covariate_weight_t.shape == (3, 24)
    x = helpers.sparse_input(9, 120, seed=2)
    cov = np.eye(3, dtype=np.float32)[np.arange(9) % 3]
    module = TargetModule(nn.Identity(), target)
    got, t_in, t_base = attributions_from_plan(plan, fast_target(module), x, method=method, covariates=cov)

    xd, cv = torch.as_tensor(x.toarray()).requires_grad_(), torch.as_tensor(cov)
    with torch.no_grad():
        ref = enc(torch.zeros_like(xd) if target == "embedding_distance" else xd, cv)
    wrapped = _CovTarget(enc, module._fn)
    if method == "ig":
        ig = IntegratedGradients(wrapped)
        expected = ig.attribute(
            xd,
            baselines=torch.zeros_like(xd),
            target=0,
            additional_forward_args=(cv, ref),
            n_steps=50,
            method="gausslegendre",
        )
    else:
        expected = InputXGradient(wrapped).attribute(xd, target=0, additional_forward_args=(cv, ref))
    _assert_rows_close(got.toarray(), expected.detach().numpy())
    with torch.no_grad():
        np.testing.assert_allclose(t_in, wrapped(xd, cv, ref)[:, 0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t_base, wrapped(torch.zeros_like(xd), cv, ref)[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pass covariates="):
        attributions_from_plan(plan, fast_target(module), x, method=method)
    with pytest.raises(ValueError, match="expected \\(cells, covariates\\)"):
        attributions_from_plan(plan, fast_target(module), x, method=method, covariates=cov[:, :2])


class GeneMapped(nn.Module):
    """An encoder over other genes: ``x_model = x_source @ gene_map``, then the encoder."""

    def __init__(self, gene_map: sparse.csr_matrix, encoder: nn.Module) -> None:
        super().__init__()
        self.gene_map = gene_map
        self.encoder = encoder
        self.register_buffer("dense_map", torch.as_tensor(gene_map.toarray(), dtype=torch.float32))

    def forward(self, x):
        return self.encoder(x @ self.dense_map)


def gene_mapped_plan(enc: GeneMapped) -> Plan | None:
    plan = build_plan(enc.encoder)
    return None if plan is None else plan.with_gene_map(enc.gene_map)


@pytest.mark.parametrize("target", ["self_similarity", "embedding_distance"])
def test_gene_map_folded_into_first_map_equals_captum(helpers, monkeypatch, target):
    monkeypatch.setitem(_BUILDERS, GeneMapped, gene_mapped_plan)
    model = helpers.scimilarity_model(200, (32, 24), 8, seed=4)
    rng = np.random.default_rng(0)
    # 260 source genes: most map to one model gene, some to none, some pairs share a model gene
    cols = rng.integers(0, 200, 260)
    vals = np.where(rng.random(260) < 0.2, 0.5, 1.0)
    keep = rng.random(260) > 0.1
    gmap = sparse.csr_matrix((vals[keep], (np.flatnonzero(keep), cols[keep])), shape=(260, 200))
    wrapped = GeneMapped(gmap, model.encoder).eval()
    plan = build_plan(wrapped)
    assert plan.first.n_inputs == 260
    assert plan.mode == "events"
    assert plan.tail == "closed"
    x = helpers.sparse_input(8, 260, seed=5)
    got, _, _ = attributions_from_plan(plan, fast_target(TargetModule(wrapped, target)), x)
    expected, _, _ = captum_attributions(TargetModule(wrapped, target), torch.as_tensor(x.toarray()))
    _assert_rows_close(got.toarray(), expected.numpy())
    # one-to-one rows of the map keep the model's own float32 weights
    one = np.flatnonzero(keep & (vals == 1.0))
    np.testing.assert_array_equal(plan.first.weight_t[one], build_plan(model.encoder).first.weight_t[cols[one]])
    with pytest.raises(ValueError, match="source genes x model genes"):
        build_plan(model.encoder).with_gene_map(gmap.T)


def test_input_width_is_checked(helpers, small_scim):
    plan = build_plan(small_scim.encoder)
    with pytest.raises(ValueError, match="takes 300"):
        attributions_from_plan(plan, fast_target(TargetModule(small_scim.encoder)), helpers.sparse_input(2, 299))


def test_register_plan_builder_as_decorator(monkeypatch):
    monkeypatch.setattr("scsig.attribution._plan._BUILDERS", dict(_BUILDERS))

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()

        def forward(self, x):
            return self.net(x)

    assert build_plan(Wrapper()) is None

    @register_plan_builder(Wrapper)
    def _wrapper(enc):
        return sequential_plan(flatten_modules(enc.net))

    assert build_plan(Wrapper()).mode == "events"
