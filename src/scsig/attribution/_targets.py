r"""Attribution targets: the scalar per cell whose gradient is attributed to the genes.

``self_similarity`` (the published SIGnature target)
    :math:`t(x') = \sum_k |z_k \, f(x')_k|` with :math:`z = f(x)` held fixed. It is maximal at
    :math:`x' = x` for L2-normalized encoders, so methods that read the gradient *at* the input
    (input x gradient; DeepLIFT on encoders whose activations it does not model) get an
    analytically zero gradient there: their attributions are float noise (degenerate).
    Integrated gradients integrates along the path from the baseline and is not affected.
``embedding_distance``
    :math:`t(x') = \lVert f(x') - f(x_0) \rVert_2`, the distance of the embedding from the
    baseline's embedding :math:`f(x_0)` (:math:`x_0 = 0`). Its gradient at the input is not zero,
    so it is the target to use with ``"ixg"`` and ``"dl"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["TARGET_DOCS", "TargetModule", "resolve_target"]

TARGET_DOCS = {
    "self_similarity": "sum_k |z_k * f(x')_k| with z = f(x) fixed (published SIGnature target)",
    "embedding_distance": "||f(x') - f(0)||_2, distance of the embedding from the baseline's embedding",
}


class TargetModule(nn.Module):
    """Wrap an encoder so that ``forward(inputs, reference)`` returns the target, shape ``(n, 1)``.

    This is the module handed to captum (``target=0``). ``reference`` is the fixed tensor the target
    compares against: ``f(x)`` for ``self_similarity``, ``f(baseline)`` for ``embedding_distance``.

    Parameters
    ----------
    encoder
        The embedding network.
    target
        ``"self_similarity"``, ``"embedding_distance"``, or a callable ``(embedding, reference) -> (n,)``.
    """

    def __init__(self, encoder: nn.Module, target: str | Callable = "self_similarity") -> None:
        super().__init__()
        self.encoder = encoder
        self.target = target
        self._fn = resolve_target(target)

    @property
    def target_name(self) -> str:
        """Name recorded in provenance."""
        return self.target if isinstance(self.target, str) else getattr(self.target, "__name__", "custom")

    def reference(self, inputs: torch.Tensor, baselines: torch.Tensor) -> torch.Tensor:
        """The fixed comparison tensor for these cells."""
        with torch.no_grad():
            if self.target == "embedding_distance":
                return self.encoder(baselines).detach()
            return self.encoder(inputs).detach()

    def forward(self, inputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Target value per cell, shape ``(n, 1)``."""
        return self._fn(self.encoder(inputs), reference).unsqueeze(1)


def _self_similarity(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.sum(torch.abs(ref * emb), dim=1)


def _embedding_distance(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(emb - ref, dim=1)


def resolve_target(target: str | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The function ``(embedding, reference) -> (n,)`` for a target name or callable."""
    if callable(target):
        return target
    if target == "self_similarity":
        return _self_similarity
    if target == "embedding_distance":
        return _embedding_distance
    msg = f"Unknown attribution target {target!r}; use one of {sorted(TARGET_DOCS)} or a callable (embedding, reference) -> tensor of shape (n,)."
    raise ValueError(msg)
