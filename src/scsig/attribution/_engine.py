"""Engine choice: the exact fast path where the model allows it, captum otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .._utils import check_choice
from ._captum import captum_attributions

if TYPE_CHECKING:
    from scipy import sparse

    from ..models import FoundationModel
    from ._targets import TargetModule

__all__ = ["Engine", "compute_batch", "fast_path_applies", "pick_engine"]

Engine = Literal["auto", "captum", "fast"]
"""The attribution engines ``engine=`` chooses from."""


def fast_path_applies(
    model: FoundationModel, method: str, module: TargetModule, device: Any = None, *, forced: bool = False
) -> bool:
    """Whether the exact fast path covers this model, method, target and device.

    ``engine="auto"`` takes it for :class:`~scsig.models.SCimilarityEncoder` models only; a forced
    ``engine="fast"`` also accepts plain :class:`torch.nn.Sequential` encoders that it covers.
    """
    try:
        from ._fast import supports
    except ImportError:  # pragma: no cover - the fast path needs numba
        return False
    if not forced:
        from ..models import SCimilarityEncoder

        if not isinstance(model.encoder, SCimilarityEncoder):
            return False
    return supports(model, method, module, device)


def pick_engine(model: FoundationModel, method: str, module: TargetModule, engine: str, device: Any = None) -> str:
    """Resolve ``engine="auto"`` and check that a forced engine applies."""
    check_choice("engine", engine, Engine)
    if engine == "captum":
        return "captum"
    applies = fast_path_applies(model, method, module, device, forced=engine == "fast")
    if engine == "fast" and not applies:
        msg = (
            f"The fast path does not cover this model/method/target ({type(model.encoder).__name__}, "
            f"method={method!r}, target={module.target_name!r}, device={device or 'cpu'!r}): it needs a CPU "
            "encoder with a plan builder (a SCimilarityEncoder, or an nn.Sequential of per-row layers in eval "
            "mode starting with an affine layer), and for 'ixg'/'dl' a target other than 'self_similarity'. "
            "Use engine='auto' or 'captum'."
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
    sparse_output: bool = False,
    workspace: Any = None,
) -> tuple[np.ndarray | sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Raw signed attributions (cells x model genes) and the target at input and baseline.

    The attributions are a dense array, or with ``sparse_output=True`` whatever the engine makes
    without densifying: CSR with the input's sparsity pattern from the fast path, a dense array
    from captum. ``workspace`` (a :class:`scsig.attribution._fast.Workspace`) lets the fast path
    reuse its buffers across the batches of a run.
    """
    if engine == "fast":
        from ._fast import fast_attributions

        attr, t_in, t_base = fast_attributions(
            module, model, x, method=method, n_steps=n_steps, device=device, workspace=workspace
        )
        return (attr if sparse_output else attr.toarray()), t_in, t_base
    inputs = torch.as_tensor(x.toarray(), dtype=torch.float32, device=device)
    attr, t_in, t_base = captum_attributions(module, inputs, method=method, n_steps=n_steps)
    del inputs
    return attr.cpu().numpy(), t_in.cpu().numpy().astype(np.float64), t_base.cpu().numpy().astype(np.float64)
