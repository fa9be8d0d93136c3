r"""Exact fast attributions for encoders whose first layer is affine.

The SCimilarity-style encoders start with an affine map (``Dropout -> Linear -> BatchNorm1d`` in eval
mode), their input is 5-10 % non-zero, and the attribution baseline is zero. Along the
integrated-gradients path :math:`x_k = \alpha_k x` the first layer's pre-activation is therefore
:math:`p_k = \alpha_k v + c` with :math:`v = M x` computed once per cell from its expressed genes
(:math:`M` the folded first layer, :math:`c` its bias). The gradient of the target with respect to
the input is :math:`M^\top g_k` (:math:`g_k` the gradient at the first pre-activation), so the
attribution :math:`x \odot \sum_k w_k M^\top g_k = x \odot M^\top (\sum_k w_k g_k)` needs
:math:`M^\top` only at the expressed genes.

When the first activation is piecewise linear with a kink at zero (PReLU, ReLU, LeakyReLU) and is
followed by another affine layer, a second structure applies: each hidden unit's pre-activation is
linear in :math:`\alpha`, so its slope changes at most once along the path. The second layer's
pre-activation at every path point is then a running sum, updated by one column of the second
weight matrix per unit that changes sign ("event"), instead of a full matrix product per point;
the backward pass through that layer uses suffix sums of the gradients in the same way. Every
quantity is the same as in the straightforward computation (captum's), up to floating-point
rounding; only the order of the arithmetic differs.

Exactness: the signs of the first and second pre-activations at every path point decide the
activations' slopes; a sum that lands within rounding of zero could flip one and change a cell's
attributions by ~1e-3. Both pre-activations are therefore accumulated in float64 here (captum's
float32 sums occasionally do flip one, which is the main source of the remaining differences), and
the first layer uses the module's own float32 weight with the following BatchNorm's scale applied in
float64 (a scale folded into a float32 weight would move the pre-activation by ~1e-8). The last
layer is a float32 product, but under the self-similarity target the signs of its entries matter:
every entry within that product's rounding bound of zero is recomputed in float64 before the target's
gradient is taken (a few per thousand entries; no measurable cost, ``benchmarks/precision.py``).

The kernels are compiled with numba and parallelized over :func:`numba.set_num_threads` threads;
the dense products run in torch. The per-point arrays are made for sub-blocks of cells and reused
across the batches of a run (:class:`Workspace`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from torch import nn

if TYPE_CHECKING:
    from ..models import FoundationModel
    from ._targets import TargetModule

__all__ = ["bytes_per_cell", "fast_attributions", "supports"]

_PASS = (nn.Dropout, nn.AlphaDropout, nn.Identity)
_PIECEWISE = (nn.PReLU, nn.ReLU, nn.LeakyReLU)
_ELEMENTWISE = (
    *_PIECEWISE,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Softsign,
)
_ROWWISE = (nn.Linear, nn.BatchNorm1d, nn.LayerNorm, *_PASS, *_ELEMENTWISE)


# --------------------------------------------------------------------------------------------
# structure of the encoder
# --------------------------------------------------------------------------------------------


def _flatten_modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential | nn.ModuleList):
        out: list[nn.Module] = []
        for child in module:
            out.extend(_flatten_modules(child))
        return out
    return [module]


def _layers(encoder: nn.Module) -> tuple[list[nn.Module], bool] | None:
    """The encoder as a flat list of per-row modules and whether its output is L2-normalized."""
    from ..models import SCimilarityEncoder

    if type(encoder).forward is SCimilarityEncoder.forward and isinstance(encoder, SCimilarityEncoder):
        modules, normalize = _flatten_modules(encoder.network), True
    elif type(encoder).forward is nn.Sequential.forward and isinstance(encoder, nn.Sequential):
        modules, normalize = _flatten_modules(encoder), False
    else:
        return None
    for m in modules:
        if not isinstance(m, _ROWWISE) or m.training:
            return None
        if isinstance(m, nn.BatchNorm1d) and (m.running_mean is None or m.running_var is None):
            return None
    return modules, normalize


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``scale * x + shift`` (float64)."""
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    shift = -bn.running_mean.detach().double() * scale
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
        shift = shift * bn.weight.detach().double()
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _take_affine(modules: list[nn.Module], start: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor] | None:
    """Fold modules from ``start`` that form ``[BN] Linear [BN]`` (Dropout/Identity anywhere) into one map.

    Returns ``(weight (out, in), bias (out,), next index, row scale (out,))``, all float64, or ``None``.
    The map is ``row_scale * (weight @ x) + bias``: the scale of a BatchNorm after the Linear is kept
    apart from the weight, so that a float32 copy of ``weight`` is the module's own float32 weight
    (without a preceding BatchNorm) and the product with it is not rounded twice.
    """
    i = start
    pre: tuple[torch.Tensor, torch.Tensor] | None = None
    while i < len(modules) and isinstance(modules[i], (*_PASS, nn.BatchNorm1d)):
        if isinstance(modules[i], nn.BatchNorm1d):
            if pre is not None:
                return None
            pre = _bn_affine(modules[i])
        i += 1
    if i >= len(modules) or not isinstance(modules[i], nn.Linear):
        return None
    lin = modules[i]
    weight = lin.weight.detach().double()
    bias = lin.bias.detach().double() if lin.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    if pre is not None:
        bias = bias + weight @ pre[1]
        weight = weight * pre[0][None, :]
    i += 1
    row = torch.ones(weight.shape[0], dtype=torch.float64)
    post_seen = False
    while i < len(modules) and isinstance(modules[i], (*_PASS, nn.BatchNorm1d)):
        if isinstance(modules[i], nn.BatchNorm1d):
            if post_seen:
                break
            row, shift = _bn_affine(modules[i])
            bias = bias * row + shift
            post_seen = True
        i += 1
    return weight, bias, i, row


def _negative_slope(act: nn.Module, width: int) -> np.ndarray:
    """Slope of a piecewise-linear activation below zero, per unit (float64)."""
    if isinstance(act, nn.ReLU):
        return np.zeros(width)
    if isinstance(act, nn.LeakyReLU):
        return np.full(width, float(act.negative_slope))
    weight = act.weight.detach().double().cpu().numpy().ravel()
    return np.broadcast_to(weight, (width,)).copy()


def _skip_pass(modules: list[nn.Module], i: int) -> int:
    while i < len(modules) and isinstance(modules[i], _PASS):
        i += 1
    return i


@dataclass
class _Plan:
    """Everything the fast path needs from one encoder, folded once and cached."""

    w1t: np.ndarray  # (n_genes, h1) float32: transpose of the first Linear's weight (see _take_affine)
    c1: np.ndarray  # (h1,) float64
    upper: list[nn.Module]  # modules after the first affine map
    normalize: bool
    s1: np.ndarray | None = None  # (h1,) float64: row scale of the first affine map
    # the second affine layer after a piecewise-linear activation (event path), else None
    neg1: np.ndarray | None = None  # (h1,) float64
    w2: torch.Tensor | None = None  # (h2, h1) float32
    w2_64: torch.Tensor | None = None  # (h2, h1) float64
    w2t: np.ndarray | None = None  # (h1, h2) float32
    w2t_64: np.ndarray | None = None  # (h1, h2) float64
    c2: np.ndarray | None = None  # (h2,) float64
    tail: list[nn.Module] | None = None  # modules after the second affine map (generic tail)
    # a tail of exactly [piecewise-linear activation, affine] handled without autograd
    neg2: torch.Tensor | None = None  # (h2,) float32
    w3: torch.Tensor | None = None  # (latent, h2) float32
    c3: torch.Tensor | None = None  # (latent,) float32
    w3_64: np.ndarray | None = None  # (latent, h2) float64
    c3_64: np.ndarray | None = None  # (latent,) float64
    w3_norm: np.ndarray | None = None  # (latent,) float64: L2 norms of the rows of w3

    @property
    def width(self) -> int:
        return int(self.w1t.shape[1])

    @property
    def width2(self) -> int:
        return 0 if self.w2 is None else int(self.w2.shape[0])


def _build_plan(encoder: nn.Module) -> _Plan | None:
    found = _layers(encoder)
    if found is None:
        return None
    modules, normalize = found
    first = _take_affine(modules, 0)
    if first is None:
        return None
    w1, b1, i, s1 = first
    plan = _Plan(
        w1t=np.ascontiguousarray(w1.T.float().cpu().numpy()),
        c1=b1.cpu().numpy(),
        s1=s1.cpu().numpy(),
        upper=modules[i:],
        normalize=normalize,
    )
    i = _skip_pass(modules, i)
    if i < len(modules) and isinstance(modules[i], _PIECEWISE):
        second = _take_affine(modules, i + 1)
        if second is not None:
            w2, b2, j, s2 = second
            w2 = w2 * s2[:, None]
            plan.neg1 = _negative_slope(modules[i], plan.width)
            plan.w2 = w2.float().contiguous()
            plan.w2_64 = w2.contiguous()
            plan.w2t = np.ascontiguousarray(w2.T.float().cpu().numpy())
            plan.w2t_64 = np.ascontiguousarray(w2.T.cpu().numpy())
            plan.c2 = b2.cpu().numpy()
            plan.tail = modules[j:]
            k = _skip_pass(modules, j)
            if k < len(modules) and isinstance(modules[k], _PIECEWISE):
                third = _take_affine(modules, k + 1)
                if third is not None and _skip_pass(modules, third[2]) == len(modules):
                    plan.neg2 = torch.from_numpy(_negative_slope(modules[k], plan.width2)).float()
                    w3 = third[0] * third[3][:, None]
                    plan.w3 = w3.float().contiguous()
                    plan.c3 = third[1].float()
                    plan.w3_64 = np.ascontiguousarray(w3.cpu().numpy())
                    plan.c3_64 = third[1].cpu().numpy()
                    plan.w3_norm = np.sqrt((plan.w3_64**2).sum(axis=1))
    return plan


_ROWS_PER_BLOCK = 4096
"""Path points (cells x points) per sub-block of the second layer and above."""

_F32_PRODUCT_TOL = 2.0**-22
"""Per summed term, a bound on the relative rounding of a float32 product ``hidden @ w3.T + c3``
(twice the unit roundoff; the bound used is this times the number of terms)."""

_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, _Plan | None]] = weakref.WeakKeyDictionary()


def _fingerprint(encoder: nn.Module) -> tuple:
    state = [(t.data_ptr(), t._version, tuple(t.shape)) for t in encoder.state_dict(keep_vars=True).values()]
    return (tuple(state), tuple(m.training for m in encoder.modules()))


def _plan(encoder: nn.Module) -> _Plan | None:
    """The cached plan of ``encoder``, rebuilt when its parameters or modes changed."""
    key = _fingerprint(encoder)
    cached = _PLANS.get(encoder)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        plan = _build_plan(encoder)
    _PLANS[encoder] = (key, plan)
    return plan


def _deeplift_is_gradient(encoder: nn.Module) -> bool:
    """Whether captum's DeepLift reduces to input x gradient on this encoder.

    captum's DeepLift replaces the gradient only at the non-linear modules it knows
    (``SUPPORTED_NON_LINEAR``: ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, pooling, Softmax);
    PReLU is not among them, so on a SCimilarity encoder DeepLift's multipliers are plain gradients
    and its attributions are input x gradient.
    """
    try:
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

        special = tuple(SUPPORTED_NON_LINEAR)
    except (ImportError, AttributeError):  # pragma: no cover - private captum API moved
        return False
    return not any(isinstance(m, special) for m in encoder.modules())


def supports(model: FoundationModel, method: str, module: TargetModule, device: Any = None) -> bool:
    """Whether the fast path computes exactly what captum computes for this model, method and target.

    Covered: CPU, an encoder that is a :class:`~scsig.models.SCimilarityEncoder` or a plain
    :class:`torch.nn.Sequential` of per-row layers in eval mode whose first layer is affine
    (Dropout/Linear/BatchNorm1d); integrated gradients with any target; input x gradient and
    DeepLIFT (which captum computes as input x gradient on encoders without the activations it
    rescales) with any target but ``"self_similarity"``, where their gradient is analytically zero.
    """
    if method not in ("ig", "ixg", "dl"):
        return False
    if device is not None and torch.device(device).type != "cpu":
        return False
    encoder = model.encoder
    if any(p.device.type != "cpu" for p in encoder.parameters()):
        return False
    if method in ("ixg", "dl") and module.target == "self_similarity":
        return False
    plan = _plan(encoder)
    if plan is None or plan.w1t.shape[0] != model.n_genes:
        return False
    return not (method == "dl" and not _deeplift_is_gradient(encoder))


def bytes_per_cell(model: FoundationModel, method: str, n_steps: int) -> int:
    """Working memory of the fast path per cell of a batch (bytes, an upper estimate).

    With the event path the per-point arrays are bounded by :data:`_ROWS_PER_BLOCK` points
    whatever the batch size (about ``_ROWS_PER_BLOCK * h2 * 14`` bytes, 60 MB at SCimilarity's
    shape, not included here); per cell remain a few float64 vectors of the hidden widths. The
    generic path holds every path point of the batch.
    """
    plan = _plan(model.encoder)
    steps = n_steps if method == "ig" else 1
    if plan is None:
        return 0
    if plan.w2 is not None:
        return int(8 * (6 * plan.width + 3 * plan.width2))
    return int(steps * 4 * plan.width * 6 + 8 * 6 * plan.width)


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------

_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """Compile (or load from numba's cache) the kernels on first use."""
    if _KERNELS:
        return _KERNELS
    from numba import njit, prange

    @njit(cache=True)
    def csr_to_csc(n_rows, n_cols, indptr, indices):  # pragma: no cover - numba
        """Column pointers, row of each entry in column order, and its position in the CSR arrays."""
        nnz = indices.size
        colptr = np.zeros(n_cols + 1, np.int64)
        for p in range(nnz):
            colptr[indices[p] + 1] += 1
        for j in range(n_cols):
            colptr[j + 1] += colptr[j]
        nxt = colptr[:-1].copy()
        rows = np.empty(nnz, np.int32)
        pos = np.empty(nnz, np.int64)
        for r in range(n_rows):
            for p in range(indptr[r], indptr[r + 1]):
                j = indices[p]
                q = nxt[j]
                rows[q] = r
                pos[q] = p
                nxt[j] = q + 1
        return colptr, rows, pos

    @njit(parallel=True, fastmath=True, cache=True)
    def sparse_times_dense(colptr, rows, pos, data, wt, out, chunk):  # pragma: no cover - numba
        """``X @ wt`` with X (n_rows, n_cols) given column-major; wt (n_cols, h) C-contiguous.

        Gene-major order reads each used row of ``wt`` once per batch; threads own column chunks of
        the output, so no two threads write the same memory. Sums are kept in float64: the signs of
        the first pre-activation along the path (which decide the activation's slope) then do not
        depend on the order of summation.
        """
        n_cols, h = wt.shape
        n_chunks = (h + chunk - 1) // chunk
        for b in prange(n_chunks):
            lo = b * chunk
            hi = min(h, lo + chunk)
            for r in range(out.shape[0]):
                out[r, lo:hi] = 0.0
            for j in range(n_cols):
                p0 = colptr[j]
                p1 = colptr[j + 1]
                if p0 == p1:
                    continue
                w = wt[j, lo:hi]
                for q in range(p0, p1):
                    o = out[rows[q], lo:hi]
                    val = np.float64(data[pos[q]])
                    for k in range(hi - lo):
                        o[k] += val * w[k]

    @njit(parallel=True, fastmath=True, cache=True)
    def sampled_rows_dot(colptr, rows, pos, data, wt, g, out):  # pragma: no cover - numba
        """``out[p] = data[p] * (wt[j] . g[r])`` for every stored entry ``p = (r, j)``."""
        n_cols, h = wt.shape
        for j in prange(n_cols):
            p0 = colptr[j]
            p1 = colptr[j + 1]
            if p0 == p1:
                continue
            w = wt[j]
            for q in range(p0, p1):
                gr = g[rows[q]]
                acc = 0.0
                for k in range(h):
                    acc += w[k] * gr[k]
                out[pos[q]] = data[pos[q]] * acc

    @njit(parallel=True, cache=True)
    def events_forward(
        v, c1, neg, alphas, w2t, pos0, a0, b0, c2, act, neg2, out, mask, ev_unit, ev_step, ev_count
    ):  # pragma: no cover
        """Second-layer pre-activation at every path point, from running sums updated per sign change.

        ``v`` (n, h1) the first layer's input term, ``c1`` its bias; the first pre-activation at
        point k is ``alphas[k] * v + c1``. ``pos0`` (n or 1, h1) is a reference sign state of the
        first pre-activation, monotone-reachable along the path (its sign at alpha -> 0, or at the
        first point), ``a0`` (n, h2) and ``b0`` (n or 1, h2) the second layer applied to
        ``slope_ref * v`` and ``slope_ref * c1`` with the activation's slopes in that state. An
        event is the first point whose sign differs from the reference state.
        Writes ``out`` (n, S, h2): the pre-activation, or with ``act`` the piecewise-linear
        activation of it (negative slopes ``neg2``) and ``mask`` whether it was positive; and each
        cell's events (unit, step) sorted by step.
        """
        n, h1 = v.shape
        h2 = w2t.shape[1]
        n_steps = alphas.size
        pos_step = np.int64(1) if pos0.shape[0] > 1 else np.int64(0)
        b_step = np.int64(1) if b0.shape[0] > 1 else np.int64(0)
        for c in prange(n):
            units = np.empty(h1, np.int32)
            steps = np.empty(h1, np.int32)
            cnt = 0
            for i in range(h1):
                vi = v[c, i]
                first = pos0[c * pos_step, i]
                last = alphas[n_steps - 1] * vi + c1[i] > 0.0
                if first != last:
                    lo = 0
                    hi = n_steps - 1
                    while lo < hi:  # first step whose sign differs from the first point's
                        mid = (lo + hi) // 2
                        if (alphas[mid] * vi + c1[i] > 0.0) != first:
                            hi = mid
                        else:
                            lo = mid + 1
                    units[cnt] = i
                    steps[cnt] = lo
                    cnt += 1
            # counting sort of the events by step
            counts = np.zeros(n_steps + 1, np.int64)
            for e in range(cnt):
                counts[steps[e] + 1] += 1
            for k in range(n_steps):
                counts[k + 1] += counts[k]
            for e in range(cnt):
                q = counts[steps[e]]
                ev_unit[c, q] = units[e]
                ev_step[c, q] = steps[e]
                counts[steps[e]] = q + 1
            ev_count[c] = cnt
            a = np.empty(h2, np.float64)
            b = np.empty(h2, np.float64)
            for h in range(h2):
                a[h] = a0[c, h]
                b[h] = b0[c * b_step, h]
            e = 0
            for k in range(n_steps):
                while e < cnt and ev_step[c, e] == k:
                    i = ev_unit[c, e]
                    vi = v[c, i]
                    d = (1.0 - neg[i]) if alphas[k] * vi + c1[i] > 0.0 else (neg[i] - 1.0)
                    dv = d * vi
                    dc = d * c1[i]
                    row = w2t[i]
                    for h in range(h2):
                        a[h] += dv * row[h]
                        b[h] += dc * row[h]
                    e += 1
                al = alphas[k]
                o = out[c, k]
                if act:
                    m = mask[c, k]
                    for h in range(h2):
                        p = np.float32(al * a[h] + b[h] + c2[h])
                        pos = p > 0
                        m[h] = pos
                        o[h] = p if pos else p * neg2[h]
                else:
                    for h in range(h2):
                        o[h] = al * a[h] + b[h] + c2[h]

    @njit(parallel=True, fastmath=True, cache=True)
    def events_backward(
        g2, act, neg2, mask, weights, v, c1, neg, alphas, w2t, ev_unit, ev_step, ev_count, g1, r_out
    ):  # pragma: no cover
        """Backward through the second layer with suffix sums of the weighted gradients.

        ``g2`` (n, S, h2) is the gradient at the second pre-activation, or with ``act`` at the
        activation's output (``mask``/``neg2`` as written by ``events_forward``). Writes ``r_out``
        (n, h2), the weighted sum over points, and adds each event's correction to ``g1`` (n, h1).
        """
        n, n_steps, h2 = g2.shape
        for c in prange(n):
            r = np.zeros(h2, np.float64)
            e = ev_count[c] - 1
            for k in range(n_steps - 1, -1, -1):
                wk = weights[k]
                gk = g2[c, k]
                if act:
                    m = mask[c, k]
                    for h in range(h2):
                        slope = np.float32(1.0) if m[h] else neg2[h]
                        r[h] += wk * (gk[h] * slope)
                else:
                    for h in range(h2):
                        r[h] += wk * gk[h]
                while e >= 0 and ev_step[c, e] == k:
                    i = ev_unit[c, e]
                    vi = v[c, i]
                    d = (1.0 - neg[i]) if alphas[k] * vi + c1[i] > 0.0 else (neg[i] - 1.0)
                    row = w2t[i]
                    acc = 0.0
                    for h in range(h2):
                        acc += row[h] * r[h]
                    g1[c, i] += d * acc
                    e -= 1
            for h in range(h2):
                r_out[c, h] = r[h]

    @njit(parallel=True, fastmath=False, cache=True)
    def target_grad(
        out, ref, per_cell, n_points, normalize, kind, grad, hidden, w3, c3, w3_norm, tol, exact
    ):  # pragma: no cover - numba
        """Gradient of the named target with respect to the encoder output before L2 normalization.

        ``kind`` 0: self-similarity ``sum_k |ref_k y_k|``; 1: distance ``||y - ref||``. Row ``i`` of
        ``out`` belongs to cell ``i // n_points`` (``ref`` per cell when ``per_cell``, else one row).
        With ``exact`` (``out = hidden @ w3.T + c3`` computed in float32), the self-similarity target's
        signs are made exact: every entry of ``out`` within the float32 product's error bound of zero
        (``tol * (|c3_k| + ||w3_k|| ||hidden_i||)``) is recomputed in float64 first.
        """
        n_rows, d = out.shape
        for i in prange(n_rows):
            rr = ref[i // n_points] if per_cell else ref[0]
            o = np.empty(d, np.float64)
            for k in range(d):
                o[k] = out[i, k]
            if exact and kind == 0:
                hrow = hidden[i]
                hn = 0.0
                for j in range(hrow.shape[0]):
                    hn += np.float64(hrow[j]) * hrow[j]
                hn = np.sqrt(hn)
                for k in range(d):
                    if abs(o[k]) <= tol * (abs(c3[k]) + w3_norm[k] * hn):
                        acc = c3[k]
                        for j in range(hrow.shape[0]):
                            acc += hrow[j] * w3[k, j]
                        o[k] = acc
            norm = 1.0
            if normalize:
                sq = 0.0
                for k in range(d):
                    sq += o[k] * o[k]
                norm = max(np.sqrt(sq), 1e-12)
            gy = np.empty(d, np.float64)
            if kind == 0:
                for k in range(d):
                    prod = rr[k] * (o[k] / norm)
                    gy[k] = rr[k] if prod > 0 else (-rr[k] if prod < 0 else 0.0)
            else:
                dist = 0.0
                for k in range(d):
                    diff = o[k] / norm - rr[k]
                    gy[k] = diff
                    dist += diff * diff
                dist = np.sqrt(dist)
                for k in range(d):
                    gy[k] = gy[k] / dist if dist > 0 else 0.0
            if normalize and norm > 1e-12:
                dot = 0.0
                for k in range(d):
                    dot += (o[k] / norm) * gy[k]
                for k in range(d):
                    grad[i, k] = (gy[k] - (o[k] / norm) * dot) / norm
            elif normalize:
                for k in range(d):
                    grad[i, k] = gy[k] / 1e-12
            else:
                for k in range(d):
                    grad[i, k] = gy[k]

    _KERNELS.update(
        csr_to_csc=csr_to_csc,
        sparse_times_dense=sparse_times_dense,
        sampled_rows_dot=sampled_rows_dot,
        events_forward=events_forward,
        events_backward=events_backward,
        target_grad=target_grad,
    )
    return _KERNELS


# --------------------------------------------------------------------------------------------
# the computation
# --------------------------------------------------------------------------------------------


class Workspace:
    """Buffers reused by the batches of one attribution run.

    Fresh multi-megabyte arrays cost a page fault per 4 KiB page on first touch, which on virtual
    machines is a large share of a batch's time; the run's batches therefore share their large
    temporaries. Dropped with the run (it is not kept on the model).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialized C-contiguous array of ``shape``, reusing the memory of earlier calls."""
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
            buf = np.empty(max(size, 1), dtype=dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)


def _path(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Path points and weights: captum's Gauss-Legendre rule for IG, the input itself otherwise."""
    if method != "ig":
        return np.ones(1), np.ones(1)
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes, alphas = approximation_parameters("gausslegendre")
    return np.asarray(alphas(n_steps), dtype=np.float64), np.asarray(step_sizes(n_steps), dtype=np.float64)


def _run(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for m in modules:
        x = m(x)
    return x


def _embed(plan: _Plan, pre1: torch.Tensor) -> torch.Tensor:
    out = _run(plan.upper, pre1)
    return F.normalize(out, p=2, dim=1) if plan.normalize else out


def _target_grad(
    plan: _Plan,
    module: TargetModule,
    out: torch.Tensor,
    ref: torch.Tensor,
    n_cells: int,
    n_points: int,
    ws: Workspace,
    hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of the summed target with respect to the encoder's last pre-normalization output.

    ``hidden``, when given, is the input of the last affine layer (``out = hidden @ w3.T + c3``), so
    that entries of ``out`` within float32 rounding of zero can be recomputed exactly.
    """
    if module.target in ("self_similarity", "embedding_distance"):
        grad = torch.from_numpy(ws.get("grad_out", tuple(out.shape), np.float32))
        ref32 = np.ascontiguousarray(ref.float().numpy())
        exact = hidden is not None and plan.w3_64 is not None
        if exact:
            args = (hidden.numpy(), plan.w3_64, plan.c3_64, plan.w3_norm, _F32_PRODUCT_TOL * hidden.shape[1])
        else:
            one = np.zeros(1)
            args = (np.zeros((1, 1), np.float32), np.zeros((1, 1)), one, one, 0.0)
        _kernels()["target_grad"](
            out.numpy(),
            ref32,
            ref.shape[0] == n_cells,
            n_points,
            plan.normalize,
            0 if module.target == "self_similarity" else 1,
            grad.numpy(),
            *args,
            exact,
        )
        return grad
    fn = module._fn
    out = out.detach().requires_grad_(requires_grad=True)
    with torch.enable_grad():
        emb = F.normalize(out, p=2, dim=1) if plan.normalize else out
        ref_rep = ref.repeat_interleave(n_points, dim=0) if ref.shape[0] == n_cells else ref.expand(emb.shape[0], -1)
        (grad,) = torch.autograd.grad(fn(emb, ref_rep).sum(), out)
    return grad


def _grad_generic(plan: _Plan, fn: Any, modules: list[nn.Module], h: torch.Tensor, ref: torch.Tensor, n: int, s: int):
    """Gradient of the summed target with respect to ``h`` through ``modules`` with autograd."""
    h = h.detach().requires_grad_(requires_grad=True)
    with torch.enable_grad():
        emb = _run(modules, h)
        if plan.normalize:
            emb = F.normalize(emb, p=2, dim=1)
        ref_rep = ref.repeat_interleave(s, dim=0) if ref.shape[0] == n else ref.expand(emb.shape[0], -1)
        (grad,) = torch.autograd.grad(fn(emb, ref_rep).sum(), h)
    return grad


def _first_layer_grad_events(
    plan: _Plan,
    module: TargetModule,
    v: np.ndarray,
    ref: torch.Tensor,
    alphas: np.ndarray,
    weights: np.ndarray,
    ws: Workspace,
) -> np.ndarray:
    """sum_k w_k dt/dp_k at the first pre-activation, through the event path (n, h1) float32.

    ``v`` (n, h1) float64 is the first layer's input term (its pre-activation at point k is
    ``alphas[k] * v + c1``).
    """
    k = _kernels()
    n, h1 = v.shape
    s = alphas.size
    h2 = plan.width2
    neg1 = plan.neg1
    # The second pre-activation is computed in float64 so that its signs along the path are exact.
    # Reference state of the first activation: its signs at alpha -> 0 (those of c1, the same for
    # every cell) on a path, so that the bias term is one product for all cells; at the single
    # point of a gradient-at-input method, the signs there (no events at all).
    if s > 1:
        pos0 = (plan.c1 > 0.0)[None, :]
        slope0 = np.where(pos0, 1.0, neg1)
        a0 = ws.get("a0", (n, h2), np.float64)
        torch.mm(torch.from_numpy(slope0 * v), plan.w2_64.T, out=torch.from_numpy(a0))
        b0 = (torch.from_numpy(slope0 * plan.c1) @ plan.w2_64.T).numpy()
    else:
        pos0 = alphas[0] * v + plan.c1 > 0.0
        slope0 = np.where(pos0, 1.0, neg1)
        ab = (torch.from_numpy(np.concatenate([slope0 * v, slope0 * plan.c1], axis=0)) @ plan.w2_64.T).numpy()
        a0, b0 = ab[:n], ab[n:]
        del ab
    act = plan.w3 is not None
    neg2 = plan.neg2.numpy() if act else np.zeros(1, dtype=np.float32)
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
        mask = ws.get("mask", (m, s, h2) if act else (1, 1, 1), np.uint8)
        ev_unit = ws.get("ev_unit", (m, h1), np.int32)
        ev_step = ws.get("ev_step", (m, h1), np.int32)
        ev_count = np.empty(m, dtype=np.int64)
        vb = v[lo:hi]
        k["events_forward"](
            vb,
            plan.c1,
            neg1,
            alphas,
            plan.w2t_64,
            pos0 if pos0.shape[0] == 1 else pos0[lo:hi],
            a0[lo:hi],
            b0 if b0.shape[0] == 1 else b0[lo:hi],
            plan.c2,
            act,
            neg2,
            out,
            mask,
            ev_unit,
            ev_step,
            ev_count,
        )
        ref_b = ref if ref.shape[0] != n else ref[lo:hi]
        hidden = torch.from_numpy(out).view(m * s, h2)
        if act:
            emb = torch.from_numpy(ws.get("emb", (m * s, plan.w3.shape[0]), np.float32))
            torch.addmm(plan.c3, hidden, plan.w3.T, out=emb)
            grad_out = _target_grad(plan, module, emb, ref_b, m, s, ws, hidden=hidden)
            g = torch.from_numpy(ws.get("grad_hidden", (m * s, h2), np.float32))
            torch.mm(grad_out, plan.w3, out=g)
        else:
            g = _grad_generic(plan, module._fn, plan.tail, hidden, ref_b, m, s)
        g2 = np.ascontiguousarray(g.view(m, s, h2).numpy())
        k["events_backward"](
            g2,
            act,
            neg2,
            mask,
            weights,
            vb,
            plan.c1,
            neg1,
            alphas,
            plan.w2t,
            ev_unit,
            ev_step,
            ev_count,
            g1[lo:hi],
            r[lo:hi],
        )
    del a0, b0
    dense = (torch.from_numpy(r) @ plan.w2).numpy()
    return (g1 + slope0 * dense).astype(np.float32)


def _first_layer_grad_generic(
    plan: _Plan, fn: Any, v: np.ndarray, ref: torch.Tensor, alphas: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """sum_k w_k dt/dp_k at the first pre-activation, with autograd through the upper layers."""
    n, h1 = v.shape
    s = alphas.size
    vt = torch.from_numpy(v)
    pre1 = (torch.from_numpy(alphas)[None, :, None] * vt[:, None, :] + torch.from_numpy(plan.c1)).float()
    g = _grad_generic(plan, fn, plan.upper, pre1.view(n * s, h1), ref, n, s).view(n, s, h1)
    return torch.einsum("nsh,s->nh", g.double(), torch.from_numpy(weights)).float().numpy()


def fast_attributions(
    module: TargetModule,
    model: FoundationModel,
    x: sparse.csr_matrix,
    *,
    method: str = "ig",
    n_steps: int = 50,
    device: Any = None,
    workspace: Workspace | None = None,
) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Raw signed attributions of a preprocessed batch, exactly as captum computes them.

    Parameters
    ----------
    module
        The target module (its encoder and target function are used).
    model
        The model whose encoder :func:`supports` accepted.
    x
        Preprocessed input, CSR float32 (cells x model genes).
    method
        ``"ig"``, ``"ixg"`` or ``"dl"``.
    n_steps
        Gauss-Legendre points for ``"ig"``.
    device
        Must be the CPU (or ``None``).
    workspace
        Buffers shared with the other batches of a run (see :class:`Workspace`).

    Returns
    -------
    attributions
        CSR float32 with the sparsity pattern of ``x`` (attributions are zero where ``x`` is).
    t_input
        Target at the input per cell (float64).
    t_baseline
        Target at the zero baseline per cell (float64).
    """
    del device  # CPU only, checked by supports()
    plan = _plan(model.encoder)
    if plan is None:
        msg = f"The fast path does not cover {type(model.encoder).__name__}; use engine='captum'."
        raise ValueError(msg)
    k = _kernels()
    x = sparse.csr_matrix(x, dtype=np.float32)
    x.sum_duplicates()
    n, n_genes = x.shape
    data = np.ascontiguousarray(x.data, dtype=np.float32)
    colptr, rows, pos = k["csr_to_csc"](n, n_genes, x.indptr.astype(np.int64), x.indices.astype(np.int32))
    from numba import get_num_threads

    # one column chunk of the first layer per thread
    chunk = max(64, -(-plan.width // get_num_threads()))
    ws = workspace if workspace is not None else Workspace()
    v = ws.get("v", (n, plan.width), np.float64)
    k["sparse_times_dense"](colptr, rows, pos, data, plan.w1t, v, chunk)
    v *= plan.s1  # the first BatchNorm's scale, applied in float64 (see _take_affine)

    fn = module._fn
    with torch.no_grad():
        c1 = torch.from_numpy(plan.c1)
        emb_x = _embed(plan, (torch.from_numpy(v) + c1).float())
        emb_0 = _embed(plan, c1.float()[None, :])
        # as TargetModule.reference: f(0) for the distance target, f(x) otherwise (custom targets too)
        ref = emb_0 if module.target == "embedding_distance" else emb_x
        t_in = fn(emb_x, ref).double().numpy()
        ref_base = ref if ref.shape[0] == n else ref.expand(n, -1)
        t_base = fn(emb_0.expand(n, -1), ref_base).double().numpy()

    alphas, weights = _path(method, n_steps)
    with torch.no_grad():
        if plan.w2 is not None:
            g = _first_layer_grad_events(plan, module, v, ref, alphas, weights, ws)
        else:
            g = _first_layer_grad_generic(plan, fn, v, ref, alphas, weights)
    g = np.ascontiguousarray(g * plan.s1, dtype=np.float32)  # back through the first BatchNorm's scale
    out = np.empty_like(data)
    k["sampled_rows_dot"](colptr, rows, pos, data, plan.w1t, g, out)
    attr = sparse.csr_matrix((out, x.indices.copy(), x.indptr.copy()), shape=x.shape)
    return attr, t_in, t_base
