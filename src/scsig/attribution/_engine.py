"""Engine choice: the exact fast path where the model allows it, captum otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ._captum import captum_attributions

if TYPE_CHECKING:
    from scipy import sparse

    from ..models import FoundationModel
    from ._targets import TargetModule

__all__ = ["compute_batch", "pick_engine"]


def fast_path_applies(model: FoundationModel, method: str, module: TargetModule) -> bool:
    """Whether the exact fast path covers this model, method and target."""
    try:
        from ._fast import supports
    except ImportError:  # pragma: no cover - the fast path is optional
        return False
    return supports(model, method, module)


def pick_engine(model: FoundationModel, method: str, module: TargetModule, engine: str) -> str:
    """Resolve ``engine="auto"`` and check that a forced engine applies."""
    if engine not in ("auto", "captum", "fast"):
        msg = f"engine must be 'auto', 'captum' or 'fast', not {engine!r}."
        raise ValueError(msg)
    if engine == "captum":
        return "captum"
    applies = fast_path_applies(model, method, module)
    if engine == "fast" and not applies:
        msg = (
            f"The fast path does not cover this model/method/target ({type(model.encoder).__name__}, "
            f"method={method!r}, target={module.target_name!r}). Use engine='auto' or 'captum'."
        )
        raise ValueError(msg)
    return "fast" if applies else "captum"


def compute_batch(
    engine: str,
    module: TargetModule,
    model: FoundationModel,
    x: sparse.csr_matrix,
    *,
    method: str,
    n_steps: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw signed attributions (cells x model genes) and the target at input and baseline."""
    if engine == "fast":
        from ._fast import fast_attributions

        return fast_attributions(module, model, x, method=method, n_steps=n_steps, device=device)
    inputs = torch.as_tensor(x.toarray(), dtype=torch.float32, device=device)
    attr, t_in, t_base = captum_attributions(module, inputs, method=method, n_steps=n_steps)
    return attr.cpu().numpy(), t_in.cpu().numpy().astype(np.float64), t_base.cpu().numpy().astype(np.float64)
