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
float64 (a scale folded into a float32 weight would move the pre-activation by ~1e-8). On
SCimilarity's shape the rest (second activation, last layer, target) is integrated between the
activations' kinks in float64 (:mod:`scsig.attribution._kernels_closed`). Where the last layer is a
float32 product per path point instead (covariates, custom targets), the signs of its entries matter
under the self-similarity target: every entry within that product's rounding bound of zero is
recomputed in float64 before the target's gradient is taken (``benchmarks/precision.py``).
Where layers run with autograd (activations without a closed form here, such as SELU, or more than two
hidden layers), the same holds per path point: a point where an activation with a kink at zero gets an
input entry within float32 rounding of zero, or (self-similarity) an output entry is near zero, is
recomputed in float64 (``benchmarks/precision.py --arch sctab``).

The code is in parts: the plan (:mod:`scsig.attribution._plan`: how an encoder becomes a first
affine map and a list of layers, with one builder per encoder type), the kernels
(:mod:`scsig.attribution._kernels`, compiled with numba and parallelized over
:func:`numba.set_num_threads` threads), the backward pass from the target to the first pre-activation
(:mod:`scsig.attribution._fast_grad`), the targets (:mod:`scsig.attribution._fast_targets`: objects with a
``gradient`` method, :func:`~scsig.attribution._fast_targets.fast_target`) and this module, the loop that
runs a plan on a batch and the entry points :func:`supports` and :func:`fast_attributions`; the dense
products run in torch. The per-point arrays are made for sub-blocks of cells and reused across the
batches of a run (:class:`~scsig.attribution._workspace.Workspace`).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import sparse
from torch import nn

from ._fast_grad import embed, first_layer_grad_autograd, first_layer_grad_events
from ._fast_targets import fast_target
from ._workspace import Workspace

if TYPE_CHECKING:
    from ..models import FoundationModel
    from ._fast_targets import AutogradTarget
    from ._plan import FirstAffine, Plan
    from ._targets import TargetModule

__all__ = ["attributions_from_plan", "bytes_per_cell", "fast_attributions", "supports"]

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

    In ``"events"`` mode the per-point arrays are bounded by :data:`~scsig.attribution._fast_grad._ROWS_PER_BLOCK` points
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


def _path(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Path points and weights: captum's Gauss-Legendre rule for IG, the input itself otherwise.

    The same arithmetic as captum's ``approximation_parameters("gausslegendre")`` (numpy's nodes and
    weights on [-1, 1], mapped to [0, 1]) without importing captum, whose import takes over a second.
    """
    if method != "ig":
        return np.ones(1), np.ones(1)
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return 0.5 * (1 + nodes), 0.5 * weights


_KERNELS_READY = False


def _load_kernels() -> None:
    """Load the compiled kernels (numba's cache, or compile them on a first run) once per process, logged at info.

    A batch of two cells through a tiny SCimilarity-shaped plan calls the kernels of SCimilarity's path with
    the argument types of a real batch, so their loading is timed here rather than inside the first batch.
    """
    global _KERNELS_READY
    if _KERNELS_READY:
        return
    _KERNELS_READY = True
    import time

    from .. import _logging as logg

    start = time.perf_counter()
    from numba.core.registry import CPUDispatcher

    from ..models import SCimilarityEncoder
    from . import _kernels, _kernels_closed
    from ._fast_targets import SelfSimilarityTarget
    from ._plan import build_plan
    from ._targets import resolve_target

    with torch.random.fork_rng(devices=[]):  # the user's random state is left as it was
        torch.manual_seed(0)
        encoder = SCimilarityEncoder(6, (4, 4), 3).eval()
    x = sparse.csr_matrix(np.arange(12, dtype=np.float32).reshape(2, 6) % 3)
    attributions_from_plan(build_plan(encoder), SelfSimilarityTarget(resolve_target("self_similarity")), x)
    kernels = [f for mod in (_kernels, _kernels_closed) for f in vars(mod).values() if isinstance(f, CPUDispatcher)]
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    how = "compiled (cached for later runs)" if misses else "loaded from numba's cache"
    logg.info(f"fast engine: {hits + misses} kernel signatures {how}", time=start)


def _first_layer_input(
    first: FirstAffine, x: sparse.csr_matrix, ws: Workspace
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The input's values, its CSR structure ``(indptr, indices)`` and ``v = scale * (x @ weight_t)`` (n, h1) float64."""
    from numba import get_num_threads

    from . import _kernels as K

    n = x.shape[0]
    data = np.ascontiguousarray(x.data, dtype=np.float32)
    csr = x.indptr.astype(np.int64), x.indices.astype(np.int32)
    # one column chunk of the first layer per thread; genes in blocks of 2 MB of weights per chunk
    chunk = max(64, -(-first.width // get_num_threads()))
    v = ws.get("v", (n, first.width), np.float64)
    K.sparse_times_dense(*csr, data, first.weight_t, v, chunk, _gene_block(chunk, first.weight_t.itemsize))
    v *= first.scale  # the first BatchNorm's scale, applied in float64 (see FirstAffine)
    return data, csr, v


def _gene_block(width: int, itemsize: int) -> int:
    """Genes per block of the sparse kernels: 2 MB of weight rows ``width`` wide."""
    return max(16, (2 << 20) // (width * itemsize))


def _targets_at_ends(
    plan: Plan, target: AutogradTarget, v: np.ndarray, bias: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The target's reference embedding and the target at the input and at the zero baseline (float64) per cell."""
    n = v.shape[0]
    with torch.no_grad():
        c1 = torch.from_numpy(bias)
        emb_x = embed(plan, (torch.from_numpy(v) + c1).float())
        emb_0 = embed(plan, c1.float())
        # as TargetModule.reference: f(0) for the distance target, f(x) otherwise (custom targets too)
        ref = emb_0 if target.reference_is_baseline else emb_x
        t_in = target.value(emb_x, ref).double().numpy()
        ref_base = ref if ref.shape[0] == n else ref.expand(n, -1)
        t_base = target.value(emb_0.expand(n, -1), ref_base).double().numpy()
    return ref, t_in, t_base


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
        The target object (:func:`~scsig.attribution._fast_targets.fast_target`).
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

    _load_kernels()
    x = sparse.csr_matrix(x, dtype=np.float32)
    x.sum_duplicates()
    n, n_genes = x.shape
    first = plan.first
    if n_genes != first.n_inputs:
        msg = f"The input has {n_genes} genes but the encoder's plan takes {first.n_inputs}."
        raise ValueError(msg)
    bias = first.cell_bias(covariates, n)
    ws = workspace if workspace is not None else Workspace()
    data, csr, v = _first_layer_input(first, x, ws)
    ref, t_in, t_base = _targets_at_ends(plan, target, v, bias)
    alphas, weights = _path(method, n_steps)
    with torch.no_grad():
        if plan.mode == "events":
            g = first_layer_grad_events(plan, target, v, bias, ref, alphas, weights, ws)
        else:
            g = first_layer_grad_autograd(plan, target, v, bias, ref, alphas, weights)
    g = np.ascontiguousarray(g * first.scale, dtype=np.float32)  # back through the first BatchNorm's scale
    out = np.empty_like(data)
    block = _gene_block(first.width, first.weight_t.itemsize)
    K.sampled_rows_dot(*csr, data, first.weight_t, g, block, get_num_threads(), out)
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
