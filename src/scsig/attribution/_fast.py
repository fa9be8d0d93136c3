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
Where layers run with autograd (activations without a closed form here, such as SELU, or more than two
hidden layers), the same holds per path point: a point where an activation with a kink at zero gets an
input entry within float32 rounding of zero, or (self-similarity) an output entry is near zero, is
recomputed in float64 (``benchmarks/precision.py --arch sctab``).

The code is in three parts: the plan (:mod:`scsig.attribution._plan`: how an encoder becomes a first
affine map and a list of layers, with one builder per encoder type), the kernels
(:mod:`scsig.attribution._kernels`, compiled with numba and parallelized over
:func:`numba.set_num_threads` threads) and this module, the loop that runs a plan on a batch; the
dense products run in torch. The per-point arrays are made for sub-blocks of cells and reused across
the batches of a run (:class:`Workspace`). Targets are objects with a ``gradient`` method
(:func:`fast_target`).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..models import FoundationModel
    from ._plan import Affine, Plan
    from ._targets import TargetModule

__all__ = ["Workspace", "attributions_from_plan", "bytes_per_cell", "fast_attributions", "fast_target", "supports"]

_ROWS_PER_BLOCK = 4096
"""Path points (cells x points) per sub-block of the second layer and above."""

_NEAR_ZERO_TOL = 2.0**-16
"""An activation's input or output entry of a path point with ``|a_k| <= tol * max_j |a_j|`` is "near
zero"; such a point is recomputed in float64 (``_grad_autograd``). On scTab-SSL's shape (random weights,
the Kang cells) the float32 error of the SELU inputs and of the output was at most ~11 float32 ulps of the
row's maximum; this is 128 ulps, and flags ~6 % of the path points there."""

_F32_PRODUCT_TOL = 2.0**-22
"""Per summed term, a bound on the relative rounding of a float32 product ``hidden @ w3.T + c3``
(twice the unit roundoff; the bound used is this times the number of terms)."""


# --------------------------------------------------------------------------------------------
# plans, cached per encoder
# --------------------------------------------------------------------------------------------

_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Plan | None]] = weakref.WeakKeyDictionary()


def _fingerprint(encoder: nn.Module) -> tuple:
    state = [(t.data_ptr(), t._version, tuple(t.shape)) for t in encoder.state_dict(keep_vars=True).values()]
    return (tuple(state), tuple(m.training for m in encoder.modules()))


def _plan(encoder: nn.Module) -> Plan | None:
    """The cached plan of ``encoder``, rebuilt when its parameters or modes changed."""
    from ._plan import build_plan

    key = _fingerprint(encoder)
    cached = _PLANS.get(encoder)
    if cached is not None and cached[0] == key:
        return cached[1]
    plan = build_plan(encoder)
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

    Covered: CPU, an encoder with a registered plan builder (:func:`scsig.attribution._plan.register_plan_builder`:
    :class:`~scsig.models.SCimilarityEncoder` and plain :class:`torch.nn.Sequential` encoders of
    per-row layers in eval mode whose first layer is affine); integrated gradients with any target;
    input x gradient and DeepLIFT (which captum computes as input x gradient on encoders without the
    activations it rescales) with any target but ``"self_similarity"``, where their gradient is
    analytically zero. Plans with covariates are run through :func:`attributions_from_plan` by the
    caller that knows the covariates, not through this entry point.
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
    if plan is None or plan.first.n_inputs != model.n_genes or plan.first.covariate_weight_t is not None:
        return False
    return not (method == "dl" and not _deeplift_is_gradient(encoder))


def bytes_per_cell(model: FoundationModel, method: str, n_steps: int) -> int:
    """Working memory of the fast path per cell of a batch (bytes, an upper estimate).

    In ``"events"`` mode the per-point arrays are bounded by :data:`_ROWS_PER_BLOCK` points
    whatever the batch size (about ``_ROWS_PER_BLOCK * h2 * 14`` bytes, 60 MB at SCimilarity's
    shape, not included here); per cell remain a few float64 vectors of the hidden widths. In
    ``"autograd"`` mode every path point of the batch is held.
    """
    plan = _plan(model.encoder)
    steps = n_steps if method == "ig" else 1
    if plan is None:
        return 0
    if plan.mode == "events":
        return int(8 * (6 * plan.width + 3 * plan.layers[0].affine.width))
    return int(steps * 4 * plan.width * 6 + 8 * 6 * plan.width)


# --------------------------------------------------------------------------------------------
# targets
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


def _per_point(ref: torch.Tensor, n_cells: int, n_points: int, n_rows: int) -> torch.Tensor:
    """``ref`` (one row per cell, or one row) repeated to one row per path point."""
    return ref.repeat_interleave(n_points, dim=0) if ref.shape[0] == n_cells else ref.expand(n_rows, -1)


class AutogradTarget:
    """A target given as a torch function ``(embedding, reference) -> (n,)``: gradients by autograd.

    Attributes
    ----------
    fn
        The target function.
    reference_is_baseline
        Whether the target compares against the baseline's embedding (else the input's).
    """

    def __init__(
        self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, reference_is_baseline: bool = False
    ):
        self.fn = fn
        self.reference_is_baseline = reference_is_baseline

    def value(self, emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The target per cell."""
        return self.fn(emb, ref)

    def gradient(
        self,
        out: torch.Tensor,
        ref: torch.Tensor,
        *,
        normalize: bool,
        n_cells: int,
        n_points: int,
        ws: Workspace,
        last: tuple[torch.Tensor, Affine] | None = None,
    ) -> torch.Tensor:
        """Gradient of the summed target with respect to the encoder output ``out`` before L2 normalization.

        Row ``i`` of ``out`` is path point ``i % n_points`` of cell ``i // n_points``; ``ref`` has one
        row per cell or one row. ``last``, when given, is ``(hidden, affine)`` with ``out = affine(hidden)``
        computed in float32, for targets that recompute entries of ``out`` near zero exactly.
        """
        del ws, last
        out = out.detach().requires_grad_(requires_grad=True)
        with torch.enable_grad():
            emb = F.normalize(out, p=2, dim=1) if normalize else out
            (grad,) = torch.autograd.grad(self.fn(emb, _per_point(ref, n_cells, n_points, emb.shape[0])).sum(), out)
        return grad


class _KernelTarget(AutogradTarget):
    """A named target whose gradient is a compiled kernel."""

    def _call(
        self,
        kernel: Any,
        out: torch.Tensor,
        ref: torch.Tensor,
        normalize: bool,  # noqa: FBT001
        n_cells: int,
        n_points: int,
        ws: Workspace,
        *extra: Any,
    ) -> torch.Tensor:
        grad = torch.from_numpy(ws.get("grad_out", tuple(out.shape), np.float32))
        ref32 = np.ascontiguousarray(ref.float().numpy())
        kernel(out.numpy(), ref32, ref.shape[0] == n_cells, n_points, normalize, grad.numpy(), *extra)
        return grad


class SelfSimilarityTarget(_KernelTarget):
    """``sum_k |z_k f(x')_k|`` with ``z = f(x)``; near-zero entries of a float32 last product made exact."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__(fn, reference_is_baseline=False)

    def gradient(self, out, ref, *, normalize, n_cells, n_points, ws, last=None):
        from . import _kernels as K

        if last is None:
            return self._call(K.self_similarity_grad, out, ref, normalize, n_cells, n_points, ws)
        hidden, affine = last
        tol = _F32_PRODUCT_TOL * hidden.shape[1]
        return self._call(
            K.self_similarity_grad_exact, out, ref, normalize, n_cells, n_points, ws,
            hidden.numpy(), affine.weight_np64, affine.bias64, affine.row_norms, tol,
        )  # fmt: skip


class DistanceTarget(_KernelTarget):
    """``||f(x') - f(0)||_2``."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__(fn, reference_is_baseline=True)

    def gradient(self, out, ref, *, normalize, n_cells, n_points, ws, last=None):
        from . import _kernels as K

        del last
        return self._call(K.distance_grad, out, ref, normalize, n_cells, n_points, ws)


def fast_target(module: TargetModule) -> AutogradTarget:
    """The engine's target object for ``module``'s target (a kernel for the named ones, autograd otherwise)."""
    if module.target == "self_similarity":
        return SelfSimilarityTarget(module._fn)
    if module.target == "embedding_distance":
        return DistanceTarget(module._fn)
    return AutogradTarget(module._fn)


# --------------------------------------------------------------------------------------------
# the computation
# --------------------------------------------------------------------------------------------


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


def _embed(plan: Plan, pre1: torch.Tensor) -> torch.Tensor:
    out = _run(plan.upper_modules, pre1)
    return F.normalize(out, p=2, dim=1) if plan.normalize else out


def _grad_autograd(
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
        (grad,) = torch.autograd.grad(target.value(emb, _per_point(ref, n, s, emb.shape[0])).sum(), h)
    if isinstance(target, SelfSimilarityTarget):
        near |= _near_zero(out.detach())
    rows = torch.nonzero(near).ravel()
    if rows.numel():
        hr = h64[rows] if h64 is not None else h.detach()[rows].double()
        ref_rows = _per_point(ref, n, s, out.shape[0])[rows].double()
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
        emb = _run(modules64, h)
        if plan.normalize:
            emb = F.normalize(emb, p=2, dim=1)
        (grad,) = torch.autograd.grad(target.value(emb, ref).sum(), h)
    return grad


_KINKED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.SELU, nn.ELU)
"""Activations whose slope jumps at zero: the sign of their input at a path point decides the gradient."""

_MODULES64: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


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


def _first_layer_grad_events(
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
    second = plan.layers[0]
    w2 = second.affine
    h2 = w2.width
    neg1 = second.negative_slope(h1)
    # The second pre-activation is computed in float64 so that its signs along the path are exact.
    # Reference state of the first activation: its signs at alpha -> 0 (those of the bias) on a
    # path, so that without covariates the bias term is one product for all cells; at the single
    # point of a gradient-at-input method, the signs there (no events at all).
    if s > 1:
        pos0 = bias > 0.0
        slope0 = np.where(pos0, 1.0, neg1)
        a0 = ws.get("a0", (n, h2), np.float64)
        torch.mm(torch.from_numpy(slope0 * v), w2.weight64.T, out=torch.from_numpy(a0))
        b0 = (torch.from_numpy(slope0 * bias) @ w2.weight64.T).numpy()
    else:
        pos0 = alphas[0] * v + bias > 0.0
        slope0 = np.where(pos0, 1.0, neg1)
        ab = (torch.from_numpy(np.concatenate([slope0 * v, slope0 * bias], axis=0)) @ w2.weight64.T).numpy()
        a0, b0 = ab[:n], ab[n:]
        del ab
    closed = plan.tail == "closed"
    if closed:
        top = plan.layers[1]
        w3 = top.affine
        neg2 = torch.from_numpy(top.negative_slope(h2)).float().numpy()
    else:
        w3, neg2 = None, np.zeros(1, dtype=np.float32)
    tail = plan.tail_modules()
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
        mask = ws.get("mask", (m, s, h2) if closed else (1, 1, 1), np.uint8)
        ev_unit = ws.get("ev_unit", (m, h1), np.int32)
        ev_step = ws.get("ev_step", (m, h1), np.int32)
        ev_count = np.empty(m, dtype=np.int64)
        vb = v[lo:hi]
        bias_b = bias if bias.shape[0] == 1 else bias[lo:hi]
        K.events_forward(
            vb, bias_b, neg1, alphas, w2.weight_t64,
            pos0 if pos0.shape[0] == 1 else pos0[lo:hi],
            a0[lo:hi],
            b0 if b0.shape[0] == 1 else b0[lo:hi],
            w2.bias64, closed, neg2, out, mask, ev_unit, ev_step, ev_count,
        )  # fmt: skip
        ref_b = ref if ref.shape[0] != n else ref[lo:hi]
        hidden = torch.from_numpy(out).view(m * s, h2)
        if closed:
            emb = torch.from_numpy(ws.get("emb", (m * s, w3.width), np.float32))
            torch.addmm(w3.bias32, hidden, w3.weight32.T, out=emb)
            grad_out = target.gradient(
                emb, ref_b, normalize=plan.normalize, n_cells=m, n_points=s, ws=ws, last=(hidden, w3)
            )
            g = torch.from_numpy(ws.get("grad_hidden", (m * s, h2), np.float32))
            torch.mm(grad_out, w3.weight32, out=g)
        else:
            g = _grad_autograd(plan, target, tail, hidden, ref_b, m, s)
        g2 = np.ascontiguousarray(g.view(m, s, h2).numpy())
        K.events_backward(
            g2, closed, neg2, mask, weights, vb, bias_b, neg1, alphas, w2.weight_t32,
            ev_unit, ev_step, ev_count, g1[lo:hi], r[lo:hi],
        )  # fmt: skip
    del a0, b0
    dense = (torch.from_numpy(r) @ w2.weight32).numpy()
    return (g1 + slope0 * dense).astype(np.float32)


def _first_layer_grad_autograd(
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
    g = _grad_autograd(plan, target, plan.upper_modules, pre1, ref, n, s, h64=pre64).view(n, s, h1)
    return torch.einsum("nsh,s->nh", g.double(), torch.from_numpy(weights)).float().numpy()


def attributions_from_plan(
    plan: Plan,
    target: AutogradTarget,
    x: sparse.csr_matrix,
    *,
    method: str = "ig",
    n_steps: int = 50,
    covariates: np.ndarray | None = None,
    workspace: Workspace | None = None,
) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Raw signed attributions of a batch under ``plan`` (the engine's loop; see :func:`fast_attributions`).

    Parameters
    ----------
    plan
        The encoder's plan.
    target
        The target object (:func:`fast_target`).
    x
        Input, CSR (cells x the plan's input genes).
    method
        ``"ig"``, ``"ixg"`` or ``"dl"`` (the last two: the gradient at the input).
    n_steps
        Gauss-Legendre points for ``"ig"``.
    covariates
        ``(cells, covariates)`` values held fixed along the path, when the plan's first map has
        covariate weights.
    workspace
        Buffers shared with the other batches of a run.
    """
    from numba import get_num_threads

    from . import _kernels as K

    x = sparse.csr_matrix(x, dtype=np.float32)
    x.sum_duplicates()
    n, n_genes = x.shape
    first = plan.first
    if n_genes != first.n_inputs:
        msg = f"The input has {n_genes} genes but the encoder's plan takes {first.n_inputs}."
        raise ValueError(msg)
    bias = first.cell_bias(covariates, n)
    data = np.ascontiguousarray(x.data, dtype=np.float32)
    colptr, rows, pos = K.csr_to_csc(n, n_genes, x.indptr.astype(np.int64), x.indices.astype(np.int32))
    # one column chunk of the first layer per thread
    chunk = max(64, -(-first.width // get_num_threads()))
    ws = workspace if workspace is not None else Workspace()
    v = ws.get("v", (n, first.width), np.float64)
    K.sparse_times_dense(colptr, rows, pos, data, first.weight_t, v, chunk)
    v *= first.scale  # the first BatchNorm's scale, applied in float64 (see FirstAffine)

    with torch.no_grad():
        c1 = torch.from_numpy(bias)
        emb_x = _embed(plan, (torch.from_numpy(v) + c1).float())
        emb_0 = _embed(plan, c1.float())
        # as TargetModule.reference: f(0) for the distance target, f(x) otherwise (custom targets too)
        ref = emb_0 if target.reference_is_baseline else emb_x
        t_in = target.value(emb_x, ref).double().numpy()
        ref_base = ref if ref.shape[0] == n else ref.expand(n, -1)
        t_base = target.value(emb_0.expand(n, -1), ref_base).double().numpy()

    alphas, weights = _path(method, n_steps)
    with torch.no_grad():
        if plan.mode == "events":
            g = _first_layer_grad_events(plan, target, v, bias, ref, alphas, weights, ws)
        else:
            g = _first_layer_grad_autograd(plan, target, v, bias, ref, alphas, weights)
    g = np.ascontiguousarray(g * first.scale, dtype=np.float32)  # back through the first BatchNorm's scale
    out = np.empty_like(data)
    K.sampled_rows_dot(colptr, rows, pos, data, first.weight_t, g, out)
    attr = sparse.csr_matrix((out, x.indices.copy(), x.indptr.copy()), shape=x.shape)
    return attr, t_in, t_base


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
    return attributions_from_plan(plan, fast_target(module), x, method=method, n_steps=n_steps, workspace=workspace)
