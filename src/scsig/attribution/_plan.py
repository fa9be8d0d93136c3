r"""Plans: an encoder as the fast engine sees it.

A :class:`Plan` describes an encoder as

1. a first affine map of the input, :class:`FirstAffine`: ``scale * (x @ weight_t) + bias``, plus
   optionally a per-cell offset from covariates held fixed (``scale * (covariates @ covariate_weight_t)``)
   and optionally folded with a linear gene-space conversion before it (:meth:`Plan.with_gene_map`);
2. a list of :class:`Layer`\ s, each a row-wise activation followed by an optional affine map; each
   layer keeps the torch modules it was read from, which the engine runs with autograd where it
   has no closed form;
3. whether the output is L2-normalized.

A plan builder turns one encoder type into a plan (or ``None`` when this instance does not fit, e.g.
a module in training mode); :func:`register_plan_builder` maps an encoder class to its builder, and
:func:`build_plan` finds the builder of an encoder. :func:`sequential_plan` reads a flat list of
modules and is what the builders for :class:`~scsig.models.SCimilarityEncoder` and
:class:`torch.nn.Sequential` use.

Which computation the engine runs follows from the plan (:attr:`Plan.mode`, :attr:`Plan.tail`), not
from which optional fields happen to be set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from ..models import SCimilarityEncoder

if TYPE_CHECKING:
    from scipy import sparse

__all__ = [
    "Affine",
    "FirstAffine",
    "Layer",
    "Plan",
    "PlanBuilder",
    "build_plan",
    "register_plan_builder",
    "sequential_plan",
]

PASS_THROUGH = (nn.Dropout, nn.AlphaDropout, nn.Identity)
"""Modules that are the identity in eval mode."""

PIECEWISE_LINEAR = (nn.PReLU, nn.ReLU, nn.LeakyReLU)
"""Activations that are linear on each side of a kink at zero (the event path needs one)."""

ELEMENTWISE = (
    *PIECEWISE_LINEAR,
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
ROWWISE = (nn.Linear, nn.BatchNorm1d, nn.LayerNorm, *PASS_THROUGH, *ELEMENTWISE)
"""Modules that act on each cell's row alone (in eval mode), which a plan may hold."""


# --------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstAffine:
    """The first affine map: ``pre = scale * (x @ weight_t) + bias (+ scale * (covariates @ covariate_weight_t))``.

    The scale (a following BatchNorm's) is kept apart from the weight so that ``weight_t`` is the
    module's own float32 weight and the engine applies the scale in float64.

    Attributes
    ----------
    weight_t
        ``(n_inputs, width)`` float32, C-contiguous: the transposed weight over the input genes.
    scale
        ``(width,)`` float64 row scale.
    bias
        ``(width,)`` float64.
    covariate_weight_t
        ``(n_covariates, width)`` float64, or ``None``: the weight of covariates that are held fixed
        along the attribution path (scVI's batch one-hot concatenated to the input). The engine is
        then given the covariates per cell and adds ``scale * (covariates @ covariate_weight_t)`` to
        each cell's bias.
    """

    weight_t: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    covariate_weight_t: np.ndarray | None = None

    @property
    def n_inputs(self) -> int:
        """Input genes."""
        return int(self.weight_t.shape[0])

    @property
    def width(self) -> int:
        """Output units."""
        return int(self.weight_t.shape[1])

    def cell_bias(self, covariates: np.ndarray | None, n_cells: int) -> np.ndarray:
        """The bias of each cell, ``(n_cells, width)`` float64, or ``(1, width)`` without covariates."""
        if self.covariate_weight_t is None:
            if covariates is not None:
                msg = "This encoder's plan has no covariates; pass covariates=None."
                raise ValueError(msg)
            return self.bias[None, :]
        if covariates is None:
            msg = f"This encoder takes {self.covariate_weight_t.shape[0]} covariates per cell; pass covariates=."
            raise ValueError(msg)
        cov = np.asarray(covariates, dtype=np.float64)
        if cov.shape != (n_cells, self.covariate_weight_t.shape[0]):
            msg = (
                f"covariates has shape {cov.shape}; expected (cells, covariates) = "
                f"({n_cells}, {self.covariate_weight_t.shape[0]})."
            )
            raise ValueError(msg)
        return self.bias[None, :] + (cov @ self.covariate_weight_t) * self.scale[None, :]


@dataclass(eq=False)
class Affine:
    """An affine map ``x @ weight.T + bias`` above the first layer, folded in float64.

    Attributes
    ----------
    weight
        ``(out, in)`` float64 tensor (Linear and BatchNorm folded together).
    bias
        ``(out,)`` float64 tensor.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def width(self) -> int:
        """Output units."""
        return int(self.weight.shape[0])

    @cached_property
    def weight32(self) -> torch.Tensor:
        """``(out, in)`` float32, contiguous."""
        return self.weight.float().contiguous()

    @cached_property
    def weight64(self) -> torch.Tensor:
        """``(out, in)`` float64, contiguous."""
        return self.weight.contiguous()

    @cached_property
    def weight_t32(self) -> np.ndarray:
        """``(in, out)`` float32 array, C-contiguous."""
        return np.ascontiguousarray(self.weight.T.float().cpu().numpy())

    @cached_property
    def weight_t64(self) -> np.ndarray:
        """``(in, out)`` float64 array, C-contiguous."""
        return np.ascontiguousarray(self.weight.T.cpu().numpy())

    @cached_property
    def bias32(self) -> torch.Tensor:
        """``(out,)`` float32."""
        return self.bias.float()

    @cached_property
    def bias64(self) -> np.ndarray:
        """``(out,)`` float64 array."""
        return self.bias.cpu().numpy()

    @cached_property
    def weight_np64(self) -> np.ndarray:
        """``(out, in)`` float64 array, C-contiguous."""
        return np.ascontiguousarray(self.weight.cpu().numpy())

    @cached_property
    def row_norms(self) -> np.ndarray:
        """L2 norms of the weight's rows (float64), for rounding bounds of ``x @ weight.T``."""
        return np.sqrt((self.weight_np64**2).sum(axis=1))


@dataclass(eq=False)
class Layer:
    """One step above the first affine map: ``affine(activation(h))``.

    Attributes
    ----------
    activation
        A row-wise module applied to the previous layer's output (PReLU, ReLU, SELU, LayerNorm, ...),
        or ``None`` when the affine map follows the previous one directly.
    affine
        The affine map after it, or ``None``.
    modules
        The encoder's own modules this layer was read from, in order (Dropout/Identity included);
        the engine runs them where it uses autograd.
    """

    activation: nn.Module | None
    affine: Affine | None
    modules: tuple[nn.Module, ...]

    @property
    def piecewise_linear(self) -> bool:
        """Whether the activation is linear on each side of zero (PReLU, ReLU, LeakyReLU)."""
        return isinstance(self.activation, PIECEWISE_LINEAR)

    def negative_slope(self, width: int) -> np.ndarray:
        """Slope of the piecewise-linear activation below zero, per unit (float64)."""
        act = self.activation
        if isinstance(act, nn.ReLU):
            return np.zeros(width)
        if isinstance(act, nn.LeakyReLU):
            return np.full(width, float(act.negative_slope))
        if isinstance(act, nn.PReLU):
            weight = act.weight.detach().double().cpu().numpy().ravel()
            return np.broadcast_to(weight, (width,)).copy()
        msg = f"{type(act).__name__} is not piecewise linear."
        raise TypeError(msg)


@dataclass(eq=False)
class Plan:
    """An encoder as a first affine map, then layers, then an optional L2 normalization.

    Attributes
    ----------
    first
        The first affine map.
    layers
        The layers above it, in order.
    normalize
        Whether the encoder's output is L2-normalized.
    """

    first: FirstAffine
    layers: tuple[Layer, ...]
    normalize: bool
    _modules: list[nn.Module] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        self._modules = [m for layer in self.layers for m in layer.modules]

    @property
    def mode(self) -> Literal["events", "autograd"]:
        """How the gradient at the first pre-activation is computed.

        ``"events"`` when the first layer is a piecewise-linear activation followed by an affine map:
        the second pre-activation along the path is a running sum updated at the activation's sign
        changes. ``"autograd"`` otherwise: torch autograd through :attr:`layers` at every path point.
        """
        if self.layers and self.layers[0].piecewise_linear and self.layers[0].affine is not None:
            return "events"
        return "autograd"

    @property
    def tail(self) -> Literal["closed", "autograd"]:
        """In ``"events"`` mode, how the layers above the second affine map are taken.

        ``"closed"`` when they are exactly one piecewise-linear activation and a last affine map (the
        SCimilarity shape): forward and backward without autograd, and the last product's entries
        near zero recomputed in float64 for the self-similarity target. ``"autograd"`` otherwise.
        """
        rest = self.layers[1:]
        if len(rest) == 1 and rest[0].piecewise_linear and rest[0].affine is not None:
            return "closed"
        return "autograd"

    @property
    def upper_modules(self) -> list[nn.Module]:
        """The torch modules above the first affine map."""
        return self._modules

    def tail_modules(self) -> list[nn.Module]:
        """The torch modules above the second affine map."""
        return [m for layer in self.layers[1:] for m in layer.modules]

    def with_gene_map(self, gene_map: sparse.spmatrix | np.ndarray) -> Plan:
        """The same encoder over other input genes: ``x_model = x_source @ gene_map`` folded into the first map.

        ``gene_map`` is ``(n_source_genes, n_inputs)`` (e.g. mouse genes -> the model's human genes,
        one 1 per ortholog pair). The folded weight ``gene_map @ weight_t`` is computed in float64 and
        rounded to float32 once (exactly the model's weights when each source gene maps to one model
        gene with weight 1), so the input stays sparse in the source genes.
        """
        from scipy import sparse as sp

        gmap = sp.csr_matrix(gene_map, dtype=np.float64)
        if gmap.shape[1] != self.first.n_inputs:
            msg = (
                f"gene_map has {gmap.shape[1]} columns but the encoder takes {self.first.n_inputs} genes; "
                "pass a (source genes x model genes) matrix."
            )
            raise ValueError(msg)
        folded = np.asarray(gmap @ self.first.weight_t.astype(np.float64))
        first = replace(self.first, weight_t=np.ascontiguousarray(folded, dtype=np.float32))
        return Plan(first=first, layers=self.layers, normalize=self.normalize)

    # names used by the tests and benchmarks of the first map
    @property
    def w1t(self) -> np.ndarray:
        """:attr:`FirstAffine.weight_t`."""
        return self.first.weight_t

    @property
    def s1(self) -> np.ndarray:
        """:attr:`FirstAffine.scale`."""
        return self.first.scale

    @property
    def c1(self) -> np.ndarray:
        """:attr:`FirstAffine.bias`."""
        return self.first.bias

    @property
    def width(self) -> int:
        """Units of the first map."""
        return self.first.width


# --------------------------------------------------------------------------------------------
# reading modules
# --------------------------------------------------------------------------------------------


def flatten_modules(module: nn.Module) -> list[nn.Module]:
    """The leaves of nested :class:`~torch.nn.Sequential` / :class:`~torch.nn.ModuleList` containers, in order."""
    if isinstance(module, nn.Sequential | nn.ModuleList):
        out: list[nn.Module] = []
        for child in module:
            out.extend(flatten_modules(child))
        return out
    return [module]


def batchnorm_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``scale * x + shift`` (float64)."""
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    shift = -bn.running_mean.detach().double() * scale
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
        shift = shift * bn.weight.detach().double()
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def take_affine(modules: list[nn.Module], start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None:
    """Fold the modules from ``start`` that form ``[BN] Linear [BN]`` (Dropout/Identity anywhere) into one map.

    Returns ``(weight (out, in), bias (out,), row scale (out,), next index)``, all float64, or
    ``None``. The map is ``row_scale * (weight @ x) + bias``: the scale of a BatchNorm after the
    Linear is kept apart from the weight, so that a float32 copy of ``weight`` is the module's own
    float32 weight (without a preceding BatchNorm).
    """
    i = start
    pre: tuple[torch.Tensor, torch.Tensor] | None = None
    while i < len(modules) and isinstance(modules[i], (*PASS_THROUGH, nn.BatchNorm1d)):
        if isinstance(modules[i], nn.BatchNorm1d):
            if pre is not None:
                return None
            pre = batchnorm_affine(modules[i])
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
    while i < len(modules) and isinstance(modules[i], (*PASS_THROUGH, nn.BatchNorm1d)):
        if isinstance(modules[i], nn.BatchNorm1d):
            if post_seen:
                break
            row, shift = batchnorm_affine(modules[i])
            bias = bias * row + shift
            post_seen = True
        i += 1
    return weight, bias, row, i


def _eval_rowwise(modules: list[nn.Module]) -> bool:
    for m in modules:
        if not isinstance(m, ROWWISE) or m.training:
            return False
        if isinstance(m, nn.BatchNorm1d) and (m.running_mean is None or m.running_var is None):
            return False
    return True


def sequential_plan(modules: list[nn.Module], *, normalize: bool = False) -> Plan | None:
    """The plan of a flat list of row-wise modules in eval mode whose first map is affine, else ``None``.

    The first ``[BN] Linear [BN]`` group (Dropout/Identity anywhere) becomes :class:`FirstAffine`;
    the rest is read as layers: an activation (any other row-wise module) and the affine group after
    it, if any.
    """
    if not _eval_rowwise(modules):
        return None
    found = take_affine(modules, 0)
    if found is None:
        return None
    weight, bias, scale, i = found
    first = FirstAffine(
        weight_t=np.ascontiguousarray(weight.T.float().cpu().numpy()),
        scale=scale.cpu().numpy(),
        bias=bias.cpu().numpy(),
    )
    layers: list[Layer] = []
    while i < len(modules):
        start = i
        while i < len(modules) and isinstance(modules[i], PASS_THROUGH):
            i += 1
        if i == len(modules):  # trailing identities: part of the last layer's modules
            if layers:
                last = layers[-1]
                layers[-1] = Layer(last.activation, last.affine, (*last.modules, *modules[start:]))
            else:
                layers.append(Layer(None, None, tuple(modules[start:])))
            break
        affine = take_affine(modules, i)
        activation = None
        if affine is None:
            activation = modules[i]
            affine = take_affine(modules, i + 1)
        if affine is None:
            layers.append(Layer(activation, None, tuple(modules[start : i + 1])))
            i += 1
            continue
        w, b, s, end = affine
        layers.append(Layer(activation, Affine(weight=w * s[:, None], bias=b), tuple(modules[start:end])))
        i = end
    return Plan(first=first, layers=tuple(layers), normalize=normalize)


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------

PlanBuilder = Callable[[nn.Module], "Plan | None"]
"""A function from an encoder to its plan, or ``None`` when this encoder instance is not covered."""

_BUILDERS: dict[type, PlanBuilder] = {}


def register_plan_builder(cls: type[nn.Module], builder: PlanBuilder | None = None):
    """Map the encoder class ``cls`` to ``builder``; usable as a decorator ``@register_plan_builder(cls)``.

    The builder is used for instances of ``cls`` and of subclasses that do not override ``forward``
    (a subclass with its own ``forward`` computes something else and needs its own builder).
    """

    def add(fn: PlanBuilder) -> PlanBuilder:
        _BUILDERS[cls] = fn
        return fn

    return add if builder is None else add(builder)


def builder_for(encoder: nn.Module) -> PlanBuilder | None:
    """The registered builder of ``encoder``'s class, or ``None``."""
    for cls in type(encoder).__mro__:
        if cls in _BUILDERS:
            return _BUILDERS[cls] if type(encoder).forward is cls.forward else None
    return None


def build_plan(encoder: nn.Module) -> Plan | None:
    """The plan of ``encoder`` from its registered builder, or ``None`` if it has none or does not fit."""
    builder = builder_for(encoder)
    if builder is None:
        return None
    with torch.no_grad():
        return builder(encoder)


@register_plan_builder(nn.Sequential)
def _sequential(encoder: nn.Module) -> Plan | None:
    return sequential_plan(flatten_modules(encoder), normalize=False)


@register_plan_builder(SCimilarityEncoder)
def _scimilarity(encoder: nn.Module) -> Plan | None:
    return sequential_plan(flatten_modules(encoder.network), normalize=True)
