"""Each compiled kernel of the fast engine against a plain numpy / scipy / torch computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

from scsig.attribution import _kernels as K


@pytest.fixture
def csr():
    rng = np.random.default_rng(0)
    x = sparse.random(23, 41, density=0.15, format="csr", random_state=rng, dtype=np.float32)
    x.data = (rng.random(x.nnz) * 3 + 0.1).astype(np.float32)
    return x


@pytest.mark.parametrize(("chunk", "gene_block"), [(3, 5), (64, 7), (4, 1000)])
def test_sparse_times_dense_equals_numpy(csr, chunk, gene_block):
    wt = np.random.default_rng(1).standard_normal((41, 10)).astype(np.float32)
    out = np.full((23, 10), np.nan)
    K.sparse_times_dense(
        csr.indptr.astype(np.int64), csr.indices.astype(np.int32), csr.data, wt, out, chunk, gene_block
    )
    np.testing.assert_allclose(out, csr.toarray().astype(np.float64) @ wt.astype(np.float64), rtol=1e-12, atol=1e-12)


def _sequential_rows(x, wt):
    """Each row's float64 sum of its genes' weight rows in ascending gene order, one term at a time."""
    out = np.zeros((x.shape[0], wt.shape[1]))
    for r in range(x.shape[0]):
        for p in range(x.indptr[r], x.indptr[r + 1]):
            out[r] = np.float64(x.data[p]) * wt[x.indices[p]].astype(np.float64) + out[r]
    return out


def test_sparse_times_dense_same_bits_whatever_the_split():
    rng = np.random.default_rng(3)
    x = sparse.random(17, 300, density=0.4, format="csr", random_state=rng, dtype=np.float32)
    x.data = rng.lognormal(size=x.nnz).astype(np.float32)
    wt = rng.standard_normal((300, 70)).astype(np.float32)
    args = (x.indptr.astype(np.int64), x.indices.astype(np.int32), x.data, wt)
    outs = []
    for chunk, gene_block in [(70, 300), (16, 7), (5, 64), (64, 1)]:
        out = np.full((17, 70), np.nan)
        K.sparse_times_dense(*args, out, chunk, gene_block)
        outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    np.testing.assert_allclose(outs[0], _sequential_rows(x, wt), rtol=1e-13, atol=1e-13)


def test_sparse_times_dense_unsorted_indices(csr):
    wt = np.random.default_rng(4).standard_normal((41, 6)).astype(np.float32)
    order = np.concatenate([np.arange(a, b)[::-1] for a, b in zip(csr.indptr[:-1], csr.indptr[1:], strict=True)])
    indices, data = csr.indices[order].astype(np.int32), csr.data[order]
    out = np.full((23, 6), np.nan)
    K.sparse_times_dense(csr.indptr.astype(np.int64), indices, data, wt, out, 4, 3)
    np.testing.assert_allclose(out, csr.toarray().astype(np.float64) @ wt.astype(np.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("gene_block", "n_groups"), [(5, 1), (7, 3), (1000, 2)])
def test_sampled_rows_dot_equals_numpy(csr, gene_block, n_groups):
    rng = np.random.default_rng(2)
    wt = rng.standard_normal((41, 10)).astype(np.float32)
    g = rng.standard_normal((23, 10)).astype(np.float32)
    out = np.full_like(csr.data, np.nan)
    K.sampled_rows_dot(
        csr.indptr.astype(np.int64), csr.indices.astype(np.int32), csr.data, wt, g, gene_block, n_groups, out
    )
    r, c = np.repeat(np.arange(23), np.diff(csr.indptr)), csr.indices
    expected = csr.data * np.einsum("ph,ph->p", wt[c].astype(np.float64), g[r].astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def _events(n, h1, h2, s, *, act, per_cell_bias, seed=0):
    """Run events_forward and events_backward; return inputs and outputs for a dense check."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, h1))
    bias = rng.standard_normal((n if per_cell_bias else 1, h1))
    neg = rng.uniform(-0.5, 0.5, h1)
    alphas = np.sort(rng.random(s))
    weights = rng.random(s)
    w2t = rng.standard_normal((h1, h2))
    c2 = rng.standard_normal(h2)
    neg2 = rng.uniform(-0.5, 0.5, h2).astype(np.float32)
    pos0 = bias > 0  # signs at alpha -> 0
    slope0 = np.where(pos0, 1.0, neg)
    a0 = (slope0 * v) @ w2t
    b0 = (slope0 * bias) @ w2t
    out = np.empty((n, s, h2), np.float32)
    mask = np.empty((n, s, h2) if act else (1, 1, 1), np.uint8)
    ev_unit = np.empty((n, h1), np.int32)
    ev_step = np.empty((n, h1), np.int32)
    ev_count = np.empty(n, np.int64)
    K.events_forward(v, bias, neg, alphas, w2t, pos0, a0, b0, c2, act, neg2, out, mask, ev_unit, ev_step, ev_count)
    # dense computation of the same path
    pre1 = alphas[None, :, None] * v[:, None, :] + bias[:, None, :]
    h = np.where(pre1 > 0, pre1, neg * pre1)
    pre2 = h @ w2t + c2
    expected = np.where(pre2 > 0, pre2, neg2 * pre2) if act else pre2
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # backward: the caller's g1 + slope0 * (r @ w2t.T) is sum_k w_k slope1_k * (g2'_k @ w2t.T)
    g2 = rng.standard_normal((n, s, h2)).astype(np.float32)
    g1 = np.zeros((n, h1))
    r = np.empty((n, h2), np.float32)
    w2t32 = w2t.astype(np.float32)
    K.events_backward(g2, act, neg2, mask, weights, v, bias, neg, alphas, w2t32, ev_unit, ev_step, ev_count, g1, r)
    total = g1 + slope0 * (r.astype(np.float64) @ w2t32.T.astype(np.float64))
    g2b = np.where(pre2 > 0, g2, neg2 * g2) if act else g2.astype(np.float64)
    slope1 = np.where(pre1 > 0, 1.0, neg)
    dense = np.einsum("s,nsi->ni", weights, slope1 * (g2b @ w2t32.T.astype(np.float64)))
    np.testing.assert_allclose(total, dense, rtol=1e-4, atol=1e-4)
    assert ev_count.sum() > 0  # the test covers sign changes along the path


@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("per_cell_bias", [False, True])
def test_events_forward_and_backward_equal_dense(act, per_cell_bias):
    _events(7, 30, 11, 12, act=act, per_cell_bias=per_cell_bias)


def _torch_target_grad(fn, out, ref, n_points, normalize):
    o = torch.tensor(out, dtype=torch.float64, requires_grad=True)
    emb = torch.nn.functional.normalize(o, dim=1) if normalize else o
    r = torch.tensor(ref, dtype=torch.float64)
    r = r.repeat_interleave(n_points, dim=0) if r.shape[0] > 1 else r.expand(emb.shape[0], -1)
    (g,) = torch.autograd.grad(fn(emb, r).sum(), o)
    return g.numpy()


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("per_cell", [False, True])
def test_target_kernels_equal_autograd(normalize, per_cell):
    rng = np.random.default_rng(3)
    n_cells, n_points, d = 4, 5, 6
    out = rng.standard_normal((n_cells * n_points, d)).astype(np.float32)
    ref = rng.standard_normal((n_cells if per_cell else 1, d)).astype(np.float32)
    for kernel, fn in [
        (K.self_similarity_grad, lambda e, r: (r * e).abs().sum(1)),
        (K.distance_grad, lambda e, r: torch.linalg.vector_norm(e - r, dim=1)),
    ]:
        grad = np.empty_like(out)
        kernel(out, ref, per_cell, n_points, normalize, grad)
        np.testing.assert_allclose(grad, _torch_target_grad(fn, out, ref, n_points, normalize), rtol=1e-5, atol=1e-6)


def test_self_similarity_exact_recomputes_entries_near_zero():
    """An entry of the float32 product within rounding of zero takes its float64 sign."""
    rng = np.random.default_rng(4)
    hidden = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((5, 8))
    c = rng.standard_normal(5)
    c[2] = -(hidden[1].astype(np.float64) @ w[2]) + 1e-9  # entry (1, 2) is +1e-9 in float64
    exact = hidden.astype(np.float64) @ w.T + c
    out = (hidden @ w.T.astype(np.float32) + c.astype(np.float32)).astype(np.float32)
    out[1, 2] = -1e-7  # a float32 product may land on the other side of zero
    ref = np.ones((1, 5), np.float32)
    grad = np.empty_like(out)
    norms = np.sqrt((w**2).sum(axis=1))
    K.self_similarity_grad_exact(out, ref, False, 3, False, grad, hidden, w, c, norms, 2.0**-22 * 8)
    np.testing.assert_array_equal(grad, np.sign(exact).astype(np.float32))
    plain = np.empty_like(out)
    K.self_similarity_grad(out, ref, False, 3, False, plain)
    assert plain[1, 2] == -1.0


@pytest.mark.parametrize("target", ["self_similarity", "embedding_distance"])
@pytest.mark.parametrize("hidden", [(40, 6), (64, 48)])
def test_closed_tail_between_kinks_equals_per_point(helpers, monkeypatch, target, hidden):
    """The closed tail integrated between the kinks gives the per-point tail's attributions.

    With 6 units in the second layer the per-cell list of slope differences outgrows its first size.
    """
    import scsig.attribution._fast_grad as fast_grad
    from scsig.attribution import TargetModule
    from scsig.attribution._fast import _plan, attributions_from_plan
    from scsig.attribution._fast_targets import fast_target

    model = helpers.scimilarity_model(300, hidden, 8, seed=3, per_unit_prelu=True)
    plan = _plan(model.encoder)
    assert plan.tail == "closed"
    x = helpers.sparse_input(20, 300, density=0.2, seed=5)
    fn = fast_target(TargetModule(model.encoder, target))
    got = {}
    for flag in (False, True):
        monkeypatch.setattr(fast_grad, "BETWEEN_KINKS", flag)
        got[flag] = attributions_from_plan(plan, fn, x, n_steps=50)[0].toarray().astype(np.float64)
    scale = np.abs(got[False]).max(axis=1)
    assert (scale > 0).all()
    np.testing.assert_array_less(np.abs(got[True] - got[False]).max(axis=1) / scale, 1e-5)
