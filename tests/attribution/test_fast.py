"""The exact fast path against captum: same numbers, engine choice, out-of-core input, threads, batches."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

import scsig as sg
from scsig.attribution import TargetModule, captum_attributions
from scsig.attribution._engine import pick_engine
from scsig.attribution._fast import fast_attributions, supports
from scsig.models import from_module

RTOL = 1e-4


def _compare(model, x, method, target, rtol=RTOL, captum_module=None):
    """Fast vs captum on the same cells: per-row max and L1 relative differences of the raw attributions."""
    module = TargetModule(model.encoder, target)
    assert supports(model, method, module)
    attr, t_in, t_base = fast_attributions(module, model, x, method=method, n_steps=50)
    assert sparse.isspmatrix_csr(attr)
    assert attr.nnz <= x.nnz
    ref_module = captum_module if captum_module is not None else module
    dense = torch.as_tensor(x.toarray(), dtype=next(ref_module.parameters()).dtype)
    ref, ref_in, ref_base = captum_attributions(ref_module, dense, method=method, n_steps=50)
    ref = ref.double().numpy()
    got = attr.toarray().astype(np.float64)
    scale = np.abs(ref).max(axis=1, keepdims=True)
    assert (scale > 0).all()
    np.testing.assert_array_less(np.abs(got - ref).max(axis=1) / scale[:, 0], rtol)
    np.testing.assert_array_less(np.abs(got - ref).sum(axis=1) / np.abs(ref).sum(axis=1), rtol)
    np.testing.assert_allclose(t_in, ref_in.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t_base, ref_base.double().numpy(), rtol=1e-5, atol=1e-6)
    return got, ref


def _assert_rows_close(got, ref, rtol=RTOL):
    """Per cell, the largest difference is at most ``rtol`` of the cell's largest attribution."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    scale = np.maximum(np.abs(ref).max(axis=1), 1e-30)
    np.testing.assert_array_less(np.abs(got - ref).max(axis=1) / scale, rtol)


COVERED = [
    ("ig", "self_similarity"),
    ("ig", "embedding_distance"),
    ("ixg", "embedding_distance"),
    ("dl", "embedding_distance"),
]


@pytest.mark.parametrize(("method", "target"), COVERED)
@pytest.mark.parametrize(
    ("n_genes", "hidden", "latent", "per_unit"),
    [
        (300, (32, 24), 8, False),  # the published architecture, small
        (500, (64, 64), 16, True),  # one PReLU slope per unit
        (400, (48,), 12, False),  # one hidden layer: the last Linear is the second affine map
        (400, (48, 40, 24), 12, False),  # three hidden layers: autograd above the second layer
    ],
)
def test_fast_equals_captum(helpers, method, target, n_genes, hidden, latent, per_unit):
    model = helpers.scimilarity_model(n_genes, hidden, latent, seed=len(hidden), per_unit_prelu=per_unit)
    x = helpers.sparse_input(12, n_genes, seed=n_genes)
    _compare(model, x, method, target)


def test_fast_equals_captum_real_shape(helpers):
    """SCimilarity's real shape (28,231 -> 1024 -> 1024 -> 128) on a few cells with ~2,000 expressed genes."""
    model = helpers.scimilarity_model(28231, (1024, 1024), 128, seed=7)
    x = helpers.sparse_input(3, 28231, density=0.075, seed=1)
    _compare(model, x, "ig", "self_similarity")


def test_fast_is_closer_to_float64_than_tolerance(helpers):
    """Against captum in float64 the fast path is well inside the tolerance (its signs of the hidden
    pre-activations along the path are computed in float64)."""
    model = helpers.scimilarity_model(2000, (128, 128), 32, seed=11)
    x = helpers.sparse_input(16, 2000, seed=4)
    enc64 = copy.deepcopy(model.encoder).double()
    _compare(model, x, "ig", "self_similarity", rtol=2e-5, captum_module=TargetModule(enc64, "self_similarity"))


def test_custom_target_callable(helpers):
    model = helpers.scimilarity_model(300, (32, 24), 8, seed=2)

    def cosine_to_reference(emb, ref):
        return torch.nn.functional.cosine_similarity(emb, ref + 0.1, dim=1)

    x = helpers.sparse_input(6, 300, seed=9)
    _compare(model, x, "ig", cosine_to_reference)


@pytest.mark.parametrize("act", [torch.nn.ReLU, torch.nn.Tanh, torch.nn.LeakyReLU])
def test_sequential_encoders_when_forced(helpers, act):
    """Plain nn.Sequential encoders: events after a piecewise-linear activation, autograd after Tanh."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Dropout(0.2),
        torch.nn.Linear(250, 40),
        torch.nn.BatchNorm1d(40),
        act(),
        torch.nn.Linear(40, 30),
        torch.nn.BatchNorm1d(30),
        act(),
        torch.nn.Linear(30, 6),
    )
    model = from_module(helpers.perturb(net), [f"g{i}" for i in range(250)])
    x = helpers.sparse_input(10, 250, seed=3)
    _compare(model, x, "ig", "self_similarity")
    module = TargetModule(model.encoder, "embedding_distance")
    # captum's DeepLift rescales at ReLU/LeakyReLU/Tanh, so it is not input x gradient there: no fast path
    assert not supports(model, "dl", module)
    assert pick_engine(model, "ig", module, "auto") == "captum"  # auto takes the fast path for SCimilarity only
    assert pick_engine(model, "ig", module, "fast") == "fast"


def test_unsupported_models_and_methods(small_scim):
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(300, 8)

        def forward(self, x):
            return self.lin(x) ** 2

    custom = from_module(Custom(), small_scim.gene_order)
    module = TargetModule(custom.encoder, "self_similarity")
    assert pick_engine(custom, "ig", module, "auto") == "captum"
    with pytest.raises(ValueError, match="fast path does not cover"):
        pick_engine(custom, "ig", module, "fast")
    scim = TargetModule(small_scim.encoder, "self_similarity")
    assert pick_engine(small_scim, "ig", scim, "auto") == "fast"
    assert pick_engine(small_scim, "ig", scim, "captum") == "captum"
    # gradient-at-input methods under self-similarity are degenerate: left to captum (and its check)
    assert pick_engine(small_scim, "ixg", scim, "auto") == "captum"
    assert not supports(small_scim, "ig", scim, device="meta")
    train = copy.deepcopy(small_scim)
    train.encoder.train()
    assert not supports(train, "ig", TargetModule(train.encoder, "self_similarity"))


def test_plan_follows_weight_changes(helpers, small_scim):
    x = helpers.sparse_input(4, 300, seed=2)
    module = TargetModule(small_scim.encoder, "self_similarity")
    before = fast_attributions(module, small_scim, x)[0].toarray()
    with torch.no_grad():
        small_scim.encoder.network[0][1].weight.mul_(1.5)
        small_scim.encoder.network[1][2].running_mean.add_(0.3)
    after, ref = _compare(small_scim, x, "ig", "self_similarity")
    assert np.abs(after - before).max() > 1e-3 * np.abs(before).max()


def test_zero_cells_and_empty_batch(helpers, small_scim):
    x = helpers.sparse_input(5, 300, seed=1).tolil()
    x[2, :] = 0
    x = sparse.csr_matrix(x)
    module = TargetModule(small_scim.encoder, "self_similarity")
    attr, t_in, t_base = fast_attributions(module, small_scim, x)
    assert attr[2].nnz == 0 or np.all(attr[2].data == 0)
    assert np.isfinite(attr.data).all()
    assert np.isfinite(t_in).all()
    empty = fast_attributions(module, small_scim, x[:0])[0]
    assert empty.shape == (0, 300)


@pytest.mark.parametrize(("method", "target"), [("ig", None), ("ixg", "embedding_distance")])
def test_attribute_layers_equal_across_engines(toy_counts, method, target):
    adata, model = toy_counts
    fast = sg.tl.attribute(adata, model, method=method, target=target, engine="auto", copy=True)
    slow = sg.tl.attribute(adata, model, method=method, target=target, engine="captum", copy=True)
    key = f"attr_{method}"
    assert fast.uns["scsig"]["layers"][key]["engine"] == "fast"
    assert slow.uns["scsig"]["layers"][key]["engine"] == "captum"
    a, b = fast.layers[key], slow.layers[key]
    assert sparse.isspmatrix_csr(a)
    assert a.dtype == np.float32
    assert a.has_sorted_indices
    _assert_rows_close(a.toarray(), b.toarray())
    np.testing.assert_allclose(np.asarray(a.sum(1)).ravel(), 1000, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_backed_h5ad_gives_the_in_memory_layer(toy_counts, tmp_path, fmt):
    adata, model = toy_counts
    if fmt == "dense":
        adata.X = adata.X.toarray()
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    sg.tl.attribute(adata, model, batch_size=7)
    backed = ad.read_h5ad(path, backed="r")
    sg.tl.attribute(backed, model, batch_size=7)
    assert backed.isbacked
    got = backed.layers["attr_ig"]
    assert sparse.isspmatrix_csr(got)
    np.testing.assert_array_equal(got.indptr, adata.layers["attr_ig"].indptr)
    np.testing.assert_array_equal(got.indices, adata.layers["attr_ig"].indices)
    np.testing.assert_allclose(got.data, adata.layers["attr_ig"].data, rtol=1e-6)
    assert backed.uns["scsig"]["layers"]["attr_ig"]["engine"] == "fast"


def test_backed_counts_are_checked_per_batch(toy_counts, tmp_path):
    adata, model = toy_counts
    x = adata.X.astype(np.float32).tocsr()
    x.data[-1] = 0.5  # in the last batch only
    adata.X = x
    path = tmp_path / "bad.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match=r"non-integer.*|cells 4\d-"):
        sg.tl.attribute(backed, model, batch_size=10)
    assert "attr_ig" not in backed.layers


def test_zero_count_cells_warn_backed(toy_counts, tmp_path):
    adata, model = toy_counts
    x = adata.X.tolil()
    x[3, :] = 0
    adata.X = sparse.csr_matrix(x)
    path = tmp_path / "zero.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.warns(UserWarning, match="1 cells have zero counts"):
        sg.tl.attribute(backed, model, batch_size=8)
    assert backed.layers["attr_ig"][3].nnz == 0


def test_dask_input(toy_counts):
    da = pytest.importorskip("dask.array")
    adata, model = toy_counts
    ref = sg.tl.attribute(adata, model, copy=True).layers["attr_ig"]
    lazy = ad.AnnData(X=da.from_array(adata.X.toarray(), chunks=(9, -1)), obs=adata.obs, var=adata.var)
    sg.tl.attribute(lazy, model, batch_size=11)
    _assert_rows_close(lazy.layers["attr_ig"].toarray(), ref.toarray())


def test_threads_follow_n_jobs(toy_counts, monkeypatch):
    import numba

    import scsig.attribution._fast as fast

    adata, model = toy_counts
    seen = []
    original = fast.fast_attributions

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), numba.get_num_threads()))
        return original(*args, **kwargs)

    monkeypatch.setattr(fast, "fast_attributions", spy)
    before = (torch.get_num_threads(), numba.get_num_threads())
    monkeypatch.setattr(sg.settings, "n_jobs", 1)
    sg.tl.attribute(adata, model, batch_size=20)
    assert seen == [(1, 1)] * 3
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


def test_batch_size_follows_memory_budget(toy_counts, monkeypatch):
    import scsig.attribution._engine as engine

    adata, model = toy_counts
    sizes = []
    original = engine.compute_batch

    def spy(*args, **kwargs):
        sizes.append(args[3].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr("scsig.attribution._engine.compute_batch", spy)
    sg.tl.attribute(adata, model)
    ref = adata.layers["attr_ig"].copy()
    assert sizes == [adata.n_obs]
    sizes.clear()
    monkeypatch.setattr(sg.settings, "memory_budget_gb", 2e-4)
    sg.tl.attribute(adata, model)
    assert 1 <= max(sizes) < adata.n_obs
    assert sum(sizes) == adata.n_obs
    # other batch sizes change only float32 rounding
    _assert_rows_close(adata.layers["attr_ig"].toarray(), ref.toarray())


@pytest.mark.parametrize(("method", "target"), [("ig", "self_similarity"), ("ixg", "embedding_distance")])
def test_sub_blocks_of_path_points(helpers, monkeypatch, method, target):
    """The second layer and above run on sub-blocks of cells; their boundaries change nothing."""
    import scsig.attribution._fast_grad as fast_grad

    model = helpers.scimilarity_model(300, (32, 24), 8, seed=6)
    x = helpers.sparse_input(9, 300, seed=8)
    monkeypatch.setattr(fast_grad, "_ROWS_PER_BLOCK", 120)  # 2 cells of 50 points per block
    _compare(model, x, method, target)


def test_first_layer_keeps_the_module_weights(small_scim):
    """The first Linear's float32 weight is used as is; its BatchNorm scale is applied in float64."""
    from scsig.attribution._fast import _plan

    plan = _plan(small_scim.encoder)
    lin = small_scim.encoder.network[0][1]
    np.testing.assert_array_equal(plan.w1t.T, lin.weight.detach().numpy())
    x = torch.rand(3, plan.w1t.shape[0], dtype=torch.float64)
    pre = copy.deepcopy(small_scim.encoder.network[0][:3]).double().eval()(x)  # Dropout, Linear, BatchNorm
    ours = (x.numpy() @ plan.w1t.astype(np.float64)) * plan.s1 + plan.c1
    np.testing.assert_allclose(ours, pre.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("seed", "cell"), [(0, 622), (1, 84)])
def test_kink_cells_match_float64(seed, cell):
    """Real cases found by benchmarks/precision.py on the SCimilarity-shaped model of that seed.
    Seed 0, Kang cell 622: a first-layer pre-activation is 4e-10 at one path point; with the BatchNorm
    scale folded into a float32 weight it moved by ~2e-8 and the cell by 1.6e-5 (row L1) from float64
    captum. Seed 1, Kang cell 84: an embedding entry in the self-similarity target lands within float32
    rounding of zero; computed in float32 the cell was 5.4e-3 off. Now both are as close as any cell (~3e-6)."""
    from scsig.datasets._toy import randomize_batchnorm
    from scsig.models import FoundationModel, SCimilarityEncoder

    adata = sg.datasets.kang_ifnb()[[cell]].copy()
    n_genes = 28231
    genes = [*adata.var_names, *(f"ABSENT{i:05d}" for i in range(n_genes - adata.n_vars))]
    torch.manual_seed(seed)
    enc = SCimilarityEncoder(n_genes, (1024, 1024), 128)
    randomize_batchnorm(enc, prelu=True)
    model = FoundationModel(enc.eval(), genes, name="bench")
    x = sparse.csr_matrix(sg.pp.prepare(adata, model).X, dtype=np.float32)
    fast, _, _ = fast_attributions(TargetModule(model.encoder, "self_similarity"), model, x, method="ig", n_steps=50)
    enc64 = TargetModule(copy.deepcopy(model.encoder).double().eval(), "self_similarity")
    ref, _, _ = captum_attributions(enc64, torch.as_tensor(x.toarray(), dtype=torch.float64), method="ig", n_steps=50)
    a = np.abs(fast.toarray().astype(np.float64)).ravel()
    b = np.abs(ref.numpy()).ravel()
    diff = np.abs(a / a.sum() - b / b.sum()).sum()
    assert diff < 6e-6, diff


def test_selu_mlp_matches_float64_at_kinks():
    """A SELU MLP (scTab-SSL's kind, small): SELU's slope jumps at zero, and on cell 99 of these 200 a
    hidden pre-activation at one path point is within float32 rounding of zero. Without the float64
    recomputation of such points that cell was 1e-3 (row-L1 of the rescaled row) from float64
    integrated gradients; every cell must now be within float32 rounding of it."""
    torch.manual_seed(4)
    lin = torch.nn.Linear
    net = torch.nn.Sequential(
        lin(400, 64), torch.nn.SELU(), lin(64, 64), torch.nn.SELU(), lin(64, 32), torch.nn.SELU(), lin(32, 8)
    ).eval()
    model = from_module(net, [f"g{i}" for i in range(400)])
    rng = np.random.default_rng(4)
    x = sparse.random(
        200, 400, density=0.1, random_state=rng, dtype=np.float32, data_rvs=lambda k: rng.gamma(2.0, 1.0, k)
    ).tocsr()
    module = TargetModule(net, "self_similarity")
    assert supports(model, "ig", module)
    got, _, _ = fast_attributions(module, model, x, method="ig", n_steps=50)
    module64 = TargetModule(copy.deepcopy(net).double(), "self_similarity")
    ref, _, _ = captum_attributions(
        module64, torch.as_tensor(x.toarray(), dtype=torch.float64), method="ig", n_steps=50
    )

    def rescaled(a):
        a = np.abs(np.asarray(a, dtype=np.float64))
        return a / a.sum(axis=1, keepdims=True)

    diff = np.abs(rescaled(got.toarray()) - rescaled(ref.numpy())).sum(axis=1)
    assert diff.max() < 1e-5, (int(diff.argmax()), float(diff.max()))


def test_path_is_captums_gauss_legendre_rule():
    """The path points and weights are captum's, computed without importing captum."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    from scsig.attribution._fast import _path

    step_sizes, alphas = approximation_parameters("gausslegendre")
    for n in (1, 7, 50):
        got_alphas, got_weights = _path("ig", n)
        np.testing.assert_array_equal(got_alphas, alphas(n))
        np.testing.assert_array_equal(got_weights, step_sizes(n))


def test_kernel_loading_is_logged_at_info(helpers, monkeypatch, capsys):
    """The first fast-engine call of a process loads (or compiles) the kernels and says so at info level,
    without touching torch's random state."""
    import scsig.attribution._fast as fast
    from scsig import _logging as logg

    before = sg.settings._verbosity
    monkeypatch.setattr(fast, "_KERNELS_READY", False)
    try:
        sg.settings.verbosity = "info"
        model = helpers.scimilarity_model(300, (32, 24), 8, seed=2)
        module = TargetModule(model.encoder, "self_similarity")
        state = torch.random.get_rng_state()
        fast_attributions(module, model, helpers.sparse_input(3, 300, seed=1))
        assert torch.equal(torch.random.get_rng_state(), state)
        err = capsys.readouterr().err
        assert "fast engine: " in err
        assert "kernel signatures" in err
        fast_attributions(module, model, helpers.sparse_input(3, 300, seed=1))  # once per process
        assert "kernel signatures" not in capsys.readouterr().err
    finally:
        sg.settings._verbosity = before
        logg.configure(sg.settings.verbosity)
