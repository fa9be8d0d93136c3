"""The fast engine's targets: the gradient of the summed target with respect to the encoder output.

Each target has ``value(embedding, reference)`` and ``gradient(out, ref, ...)``; the named ones
(self-similarity, embedding distance) compute the gradient with a compiled kernel
(:mod:`scsig.attribution._kernels`), any other target with autograd. :func:`fast_target` picks the
object for a :class:`~scsig.attribution.TargetModule`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._plan import Affine
    from ._targets import TargetModule
    from ._workspace import Workspace

__all__ = ["AutogradTarget", "DistanceTarget", "SelfSimilarityTarget", "fast_target", "per_point"]

_F32_PRODUCT_TOL = 2.0**-22
"""Per summed term, a bound on the relative rounding of a float32 product ``hidden @ w3.T + c3``
(twice the unit roundoff; the bound used is this times the number of terms)."""


def per_point(ref: torch.Tensor, n_cells: int, n_points: int, n_rows: int) -> torch.Tensor:
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
            (grad,) = torch.autograd.grad(self.fn(emb, per_point(ref, n_cells, n_points, emb.shape[0])).sum(), out)
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
