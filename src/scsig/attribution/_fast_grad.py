r"""The fast engine's backward pass: ``sum_k w_k dt/dp_k`` at the first pre-activation of a batch.

Two ways, after the plan's mode (:attr:`scsig.attribution._plan.Plan.mode`):

- ``"events"``: the first activation is piecewise linear and followed by an affine map, so the second
  pre-activation along the path is a running sum updated at each hidden unit's sign change
  (:func:`first_layer_grad_events`, with the kernels ``events_forward`` / ``events_backward``); above it
  either a closed form (one more piecewise-linear activation and a last affine map) or autograd.
- ``"autograd"``: autograd through all layers at every path point (:func:`first_layer_grad_autograd`).

Wherever layers run with autograd, path points near an activation's kink are recomputed in float64
(:func:`grad_autograd`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._fast_targets import DistanceTarget, SelfSimilarityTarget, per_point

if TYPE_CHECKING:
    from ._fast_targets import AutogradTarget
    from ._plan import Affine, Plan
    from ._workspace import Workspace

__all__ = ["embed", "first_layer_grad_autograd", "first_layer_grad_events", "grad_autograd"]

_ROWS_PER_BLOCK = 4096
"""Path points (cells x points) per sub-block of the second layer and above."""

_NEAR_ZERO_TOL = 2.0**-16
"""An activation's input or output entry of a path point with ``|a_k| <= tol * max_j |a_j|`` is "near
zero"; such a point is recomputed in float64 (:func:`grad_autograd`). On scTab-SSL's shape (random weights,
the Kang cells) the float32 error of the SELU inputs and of the output was at most ~11 float32 ulps of the
row's maximum; this is 128 ulps, and flags ~6 % of the path points there."""

BETWEEN_KINKS = True
"""Whether a closed tail with one first-layer bias and a kernel target runs integrated between the kinks
(:mod:`scsig.attribution._kernels_closed`); ``False`` runs the per-point tail (kept to compare the two)."""

_KINKED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SELU, nn.ELU)
"""Activations whose slope jumps at zero: the sign of their input at a path point decides the gradient."""

_MODULES64: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def run_modules(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``modules`` applied in order."""
    for m in modules:
        x = m(x)
    return x


def embed(plan: Plan, pre1: torch.Tensor) -> torch.Tensor:
    """The encoder output of a first pre-activation ``pre1`` (L2-normalized when the plan says so)."""
    out = run_modules(plan.upper_modules, pre1)
    return F.normalize(out, p=2, dim=1) if plan.normalize else out


def grad_autograd(
    plan: Plan,
    target: AutogradTarget,
    modules: list[nn.Module],
    h: torch.Tensor,
    ref: torch.Tensor,
    n: int,
    s: int,
    h64: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of the summed target with respect to ``h`` through ``modules`` with autograd.

    The path points where the input of an activation with a kink at zero (SELU, ReLU, ...) has an
    entry within float32 rounding of zero, and under the self-similarity target those with an output
    entry near zero (a kink of ``|z_k f_k|``), are recomputed in float64 from ``h64`` (``h`` in float64, when
    the caller has it) through float64 copies of ``modules`` (see :data:`_NEAR_ZERO_TOL`).
    """
    h = h.detach().requires_grad_(requires_grad=True)
    near = torch.zeros(h.shape[0], dtype=torch.bool)
    with torch.enable_grad():
        out = h
        for m in modules:
            if isinstance(m, _KINKED):
                near |= _near_zero(out.detach())
            out = m(out)
        emb = F.normalize(out, p=2, dim=1) if plan.normalize else out
        (grad,) = torch.autograd.grad(target.value(emb, per_point(ref, n, s, emb.shape[0])).sum(), h)
    if isinstance(target, SelfSimilarityTarget):
        near |= _near_zero(out.detach())
    rows = torch.nonzero(near).ravel()
    if rows.numel():
        hr = h64[rows] if h64 is not None else h.detach()[rows].double()
        ref_rows = per_point(ref, n, s, out.shape[0])[rows].double()
        g64 = _grad_float64(plan, target, modules, hr, ref_rows)
        grad[rows] = g64.to(grad.dtype)
    return grad


def _near_zero(a: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` with an entry within float32 rounding of zero (:data:`_NEAR_ZERO_TOL`)."""
    return (a.abs() <= _NEAR_ZERO_TOL * a.abs().amax(dim=1, keepdim=True)).any(dim=1)


def _grad_float64(
    plan: Plan, target: AutogradTarget, modules: list[nn.Module], h: torch.Tensor, ref: torch.Tensor
) -> torch.Tensor:
    """Gradient of the summed target with respect to ``h`` (float64, one reference row per row of ``h``)."""
    modules64 = _float64_modules(modules)
    h = h.detach().requires_grad_(requires_grad=True)
    with torch.enable_grad():
        emb = run_modules(modules64, h)
        if plan.normalize:
            emb = F.normalize(emb, p=2, dim=1)
        (grad,) = torch.autograd.grad(target.value(emb, ref).sum(), h)
    return grad


def _float64_modules(modules: list[nn.Module]) -> list[nn.Module]:
    """float64 copies of ``modules`` (cached per module; a module's copy is remade when its parameters change)."""
    import copy

    copies = []
    for m in modules:
        key = tuple((p.data_ptr(), p._version) for p in m.parameters()) + tuple(
            (b.data_ptr(), b._version) for b in m.buffers()
        )
        hit = _MODULES64.get(m)
        if hit is None or hit[0] != key:
            hit = (key, copy.deepcopy(m).double())
            _MODULES64[m] = hit
        copies.append(hit[1])
    return copies


@dataclass(frozen=True)
class _UpperLayers:
    """The layers above the first activation, as the event kernels take them."""

    second: Affine
    """The affine map after the first activation."""
    neg1: np.ndarray
    """The first activation's slope below zero, per unit (float64)."""
    closed: bool
    """Whether the rest is one more piecewise-linear activation and a last affine map, in closed form."""
    top: Affine | None
    """That last affine map (closed form only)."""
    neg2: np.ndarray
    """The second activation's slope below zero, per unit, float32 (closed form only; else unused)."""
    tail: list[nn.Module]
    """The modules above the second affine map, run with autograd when the rest is not closed."""


def _upper_layers(plan: Plan, h1: int) -> _UpperLayers:
    second = plan.layers[0]
    neg1 = second.negative_slope(h1)
    closed = plan.tail == "closed"
    if closed:
        top = plan.layers[1]
        w3 = top.affine
        neg2 = torch.from_numpy(top.negative_slope(second.affine.width)).float().numpy()
    else:
        w3, neg2 = None, np.zeros(1, dtype=np.float32)
    return _UpperLayers(second.affine, neg1, closed, w3, neg2, plan.tail_modules())


def _reference_state(
    v: np.ndarray, bias: np.ndarray, alphas: np.ndarray, neg1: np.ndarray, w2: Affine, ws: Workspace
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The first activation's signs in its reference state and the second pre-activation's terms there.

    Returns ``pos0`` and ``slope0`` (the signs and slopes of the first activation), ``a0`` (n, h2) and
    ``b0`` (n or 1, h2), the second pre-activation's input and bias terms, computed in float64 so that
    its signs along the path are exact. On a path the reference state is alpha -> 0 (the signs of the
    bias), so that without covariates the bias term is one product for all cells; at the single point
    of a gradient-at-input method it is that point (no events at all).
    """
    n = v.shape[0]
    if alphas.size > 1:
        pos0 = bias > 0.0
        slope0 = np.where(pos0, 1.0, neg1)
        a0 = ws.get("a0", (n, w2.width), np.float64)
        torch.mm(torch.from_numpy(slope0 * v), w2.weight64.T, out=torch.from_numpy(a0))
        b0 = (torch.from_numpy(slope0 * bias) @ w2.weight64.T).numpy()
    else:
        pos0 = alphas[0] * v + bias > 0.0
        slope0 = np.where(pos0, 1.0, neg1)
        ab = (torch.from_numpy(np.concatenate([slope0 * v, slope0 * bias], axis=0)) @ w2.weight64.T).numpy()
        a0, b0 = ab[:n], ab[n:]
        del ab
    return pos0, slope0, a0, b0


def _grad_at_hidden(
    plan: Plan,
    target: AutogradTarget,
    up: _UpperLayers,
    hidden: torch.Tensor,
    ref: torch.Tensor,
    m: int,
    s: int,
    ws: Workspace,
) -> torch.Tensor:
    """Gradient of the summed target at the second layer's output ``hidden`` (m * s, h2) of a block of cells."""
    if not up.closed:
        return grad_autograd(plan, target, up.tail, hidden, ref, m, s)
    w3 = up.top
    emb = torch.from_numpy(ws.get("emb", (m * s, w3.width), np.float32))
    torch.addmm(w3.bias32, hidden, w3.weight32.T, out=emb)
    grad_out = target.gradient(emb, ref, normalize=plan.normalize, n_cells=m, n_points=s, ws=ws, last=(hidden, w3))
    g = torch.from_numpy(ws.get("grad_hidden", (m * s, hidden.shape[1]), np.float32))
    torch.mm(grad_out, w3.weight32, out=g)
    return g


@dataclass(frozen=True)
class _ClosedTail:
    """What :func:`~scsig.attribution._kernels_closed.events_closed` takes that is the same for all cells."""

    pos2_0: np.ndarray
    """The second activation's signs at alpha -> 0 (h2,)."""
    d2w3t: np.ndarray
    """``D2_0 W3^T`` (h2, d) float64, ``D2_0`` the second activation's slopes at alpha -> 0."""
    m0t: np.ndarray
    """``W2^T D2_0 W3^T`` (h1, d) float64."""
    q0: np.ndarray
    """``(b0 + c2) D2_0 W3^T`` (d,) float64."""
    neg2: np.ndarray
    """The second activation's negative slopes (h2,) float64."""


_CLOSED: weakref.WeakKeyDictionary[Plan, _ClosedTail] = weakref.WeakKeyDictionary()


def _closed_tail(plan: Plan, up: _UpperLayers, b0: np.ndarray) -> _ClosedTail:
    """The plan's :class:`_ClosedTail` (cached; one first-layer bias for all cells, so ``b0`` is the plan's)."""
    hit = _CLOSED.get(plan)
    if hit is not None:
        return hit
    w2, w3 = up.second, up.top
    neg2 = plan.layers[1].negative_slope(w2.width)
    pre2_0 = b0.ravel() + w2.bias64
    pos2_0 = pre2_0 > 0.0
    d2w3t = np.where(pos2_0, 1.0, neg2)[:, None] * w3.weight_t64
    tail = _ClosedTail(pos2_0, d2w3t, np.ascontiguousarray(w2.weight_t64 @ d2w3t), pre2_0 @ d2w3t, neg2)
    _CLOSED[plan] = tail
    return tail


def _closed_between_kinks(
    plan: Plan,
    target: AutogradTarget,
    up: _UpperLayers,
    v: np.ndarray,
    bias: np.ndarray,
    ref: torch.Tensor,
    alphas: np.ndarray,
    weights: np.ndarray,
    pos0: np.ndarray,
    slope0: np.ndarray,
    a0: np.ndarray,
    b0: np.ndarray,
    ws: Workspace,
) -> np.ndarray:
    """sum_k w_k dt/dp_k for a closed tail with one first-layer bias and a kernel target (:mod:`._kernels_closed`)."""
    from ._kernels_closed import events_closed

    n, h1 = v.shape
    tail = _closed_tail(plan, up, b0)
    w2, w3 = up.second, up.top
    # the dense products in torch (its BLAS does not depend on OPENBLAS_CORETYPE, numpy's does)
    p0 = torch.from_numpy(a0).mm(torch.from_numpy(tail.d2w3t)).numpy()
    g1 = ws.get("g1", (n, h1), np.float64)
    g1.fill(0.0)
    y_sum = ws.get("y_sum", (n, w3.width), np.float64)
    c_sum = ws.get("c_sum", (n, w2.width), np.float64)
    ref64 = np.ascontiguousarray(ref.double().numpy())
    events_closed(
        v, bias[0], up.neg1, pos0[0], alphas, weights, w2.weight_t64, w2.weight_t32, a0, b0[0], w2.bias64, tail.neg2,
        tail.pos2_0, w3.weight_t64, tail.m0t, p0, tail.q0, w3.bias64, ref64, ref64.shape[0] == n,
        isinstance(target, DistanceTarget), plan.normalize, g1, y_sum, c_sum,
    )  # fmt: skip
    dense = torch.from_numpy(y_sum).mm(torch.from_numpy(tail.m0t).T)
    dense.addmm_(torch.from_numpy(c_sum), w2.weight64)
    dense = dense.numpy()
    dense *= slope0
    dense += g1
    return dense.astype(np.float32)


def first_layer_grad_events(
    plan: Plan,
    target: AutogradTarget,
    v: np.ndarray,
    bias: np.ndarray,
    ref: torch.Tensor,
    alphas: np.ndarray,
    weights: np.ndarray,
    ws: Workspace,
) -> np.ndarray:
    """sum_k w_k dt/dp_k at the first pre-activation, in ``"events"`` mode (n, h1) float32.

    ``v`` (n, h1) float64 is the first layer's input term, ``bias`` (n or 1, h1) its bias: the
    pre-activation at point k is ``alphas[k] * v + bias``.
    """
    from . import _kernels as K

    n, h1 = v.shape
    s = alphas.size
    up = _upper_layers(plan, h1)
    w2 = up.second
    h2 = w2.width
    pos0, slope0, a0, b0 = _reference_state(v, bias, alphas, up.neg1, w2, ws)
    kernel_target = isinstance(target, (SelfSimilarityTarget, DistanceTarget))
    if BETWEEN_KINKS and up.closed and s > 1 and bias.shape[0] == 1 and kernel_target:
        return _closed_between_kinks(plan, target, up, v, bias, ref, alphas, weights, pos0, slope0, a0, b0, ws)
    g1 = ws.get("g1", (n, h1), np.float64)
    g1.fill(0.0)
    r = ws.get("r", (n, h2), np.float32)
    # the per-point arrays are made for sub-blocks of cells: small enough to stay warm in the caches
    # and to be reused (a fresh page costs a page fault), large enough for efficient products
    m_max = max(1, min(n, _ROWS_PER_BLOCK // s))
    for lo in range(0, n, m_max):
        hi = min(n, lo + m_max)
        m = hi - lo
        out = ws.get("hidden", (m, s, h2), np.float32)
        mask = ws.get("mask", (m, s, h2) if up.closed else (1, 1, 1), np.uint8)
        ev_unit = ws.get("ev_unit", (m, h1), np.int32)
        ev_step = ws.get("ev_step", (m, h1), np.int32)
        ev_count = np.empty(m, dtype=np.int64)
        vb = v[lo:hi]
        bias_b = bias if bias.shape[0] == 1 else bias[lo:hi]
        K.events_forward(
            vb, bias_b, up.neg1, alphas, w2.weight_t64,
            pos0 if pos0.shape[0] == 1 else pos0[lo:hi],
            a0[lo:hi],
            b0 if b0.shape[0] == 1 else b0[lo:hi],
            w2.bias64, up.closed, up.neg2, out, mask, ev_unit, ev_step, ev_count,
        )  # fmt: skip
        ref_b = ref if ref.shape[0] != n else ref[lo:hi]
        g = _grad_at_hidden(plan, target, up, torch.from_numpy(out).view(m * s, h2), ref_b, m, s, ws)
        g2 = np.ascontiguousarray(g.view(m, s, h2).numpy())
        K.events_backward(
            g2, up.closed, up.neg2, mask, weights, vb, bias_b, up.neg1, alphas, w2.weight_t32,
            ev_unit, ev_step, ev_count, g1[lo:hi], r[lo:hi],
        )  # fmt: skip
    del a0, b0
    dense = (torch.from_numpy(r) @ w2.weight32).numpy()
    return (g1 + slope0 * dense).astype(np.float32)


def first_layer_grad_autograd(
    plan: Plan,
    target: AutogradTarget,
    v: np.ndarray,
    bias: np.ndarray,
    ref: torch.Tensor,
    alphas: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """sum_k w_k dt/dp_k at the first pre-activation, with autograd through the layers (``"autograd"`` mode)."""
    n, h1 = v.shape
    s = alphas.size
    vt = torch.from_numpy(v)
    pre64 = (torch.from_numpy(alphas)[None, :, None] * vt[:, None, :] + torch.from_numpy(bias)[:, None, :]).view(
        n * s, h1
    )
    pre1 = pre64.float()
    g = grad_autograd(plan, target, plan.upper_modules, pre1, ref, n, s, h64=pre64).view(n, s, h1)
    return torch.einsum("nsh,s->nh", g.double(), torch.from_numpy(weights)).float().numpy()
