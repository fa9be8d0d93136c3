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

__all__ = ["CellGroups", "Engine", "compute_batch", "fast_path_applies", "pick_engine"]

Engine = Literal["auto", "captum", "fast", "tokens"]
"""The attribution engines ``engine=`` chooses from."""


def fast_path_applies(
    model: FoundationModel, method: str, module: TargetModule, device: Any = None, *, forced: bool = False
) -> bool:
    """Whether the exact fast path covers this model, method, target and device.

    ``engine="auto"`` takes it for :class:`~scsig.models.SCimilarityEncoder` models and models that
    set ``fast_path_auto`` (scvi-tools encoders); a forced
    ``engine="fast"`` also accepts plain :class:`torch.nn.Sequential` encoders that it covers.
    """
    try:
        from ._fast import supports
    except ImportError:  # pragma: no cover - the fast path needs numba
        return False
    if not forced:
        from ..models import SCimilarityEncoder

        if not isinstance(model.encoder, SCimilarityEncoder) and not getattr(model, "fast_path_auto", False):
            return False
    return supports(model, method, module, device)


def pick_engine(model: FoundationModel, method: str, module: TargetModule, engine: str, device: Any = None) -> str:
    """Resolve ``engine="auto"`` and check that a forced engine applies."""
    check_choice("engine", engine, Engine)
    from ._tokens import token_engine_applies

    if token_engine_applies(model, engine):  # token transformers: only the token engine
        return "tokens"
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
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray | sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Raw signed attributions (cells x model genes) and the target at input and baseline.

    The attributions are a dense array, or with ``sparse_output=True`` whatever the engine makes
    without densifying: CSR with the input's sparsity pattern from the fast path, a dense array
    from captum. ``workspace`` (a :class:`scsig.attribution._fast.Workspace`) lets the fast path
    reuse its buffers across the batches of a run. ``stats``, when given, receives what an engine
    reports besides the attributions: the token engine's genes dropped per cell (``"dropped"``), which
    it then does not warn about itself.
    """
    if engine == "tokens":
        from ._tokens import token_attributions

        attr, t_in, t_base, dropped = token_attributions(
            module, model, x, method=method, n_steps=n_steps, device=device, warn=stats is None
        )
        if stats is not None:
            stats["dropped"] = dropped
        return (attr if sparse_output else attr.toarray()), t_in, t_base
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


class CellGroups:
    """Per-cell encoders of a model whose encoder takes covariates held fixed (e.g. scVI's batch).

    The model's ``cell_groups(obs)`` gives each cell a group and each group a plain encoder; a batch
    of cells is attributed group by group and its rows put back in order.
    """

    def __init__(self, model: FoundationModel, obs: Any, target: Any) -> None:
        from ..models import FoundationModel as _FM
        from ._targets import TargetModule

        self.codes, encoders = model.cell_groups(obs)
        self.models = [
            _FM(enc, model.gene_order, preprocessing=model.preprocessing, name=model.name) for enc in encoders
        ]
        self.modules = [TargetModule(enc, target) for enc in encoders]

    def to(self, device: Any) -> CellGroups:
        for m in self.modules:
            m.to(device)
        return self

    def batch_fn(self, lo: int, hi: int) -> Any:
        """A :func:`compute_batch` for the cells ``lo:hi`` that uses each cell's own encoder."""
        return self.batch_fn_for(np.arange(lo, hi))

    def batch_fn_for(self, rows: np.ndarray) -> Any:
        """A :func:`compute_batch` for the cells at positions ``rows`` that uses each cell's own encoder."""
        from scipy import sparse as sp

        codes = self.codes[rows]

        def run(engine: str, module: Any, model: Any, x: sparse.csr_matrix, **kwargs: Any) -> tuple:
            parts, t_ins, t_bases, order = [], [], [], []
            for g in np.unique(codes):
                idx = np.flatnonzero(codes == g)
                raw, t_in, t_base = compute_batch(engine, self.modules[g], self.models[g], x[idx], **kwargs)
                parts.append(raw)
                t_ins.append(t_in)
                t_bases.append(t_base)
                order.append(idx)
            perm = np.argsort(np.concatenate(order), kind="stable")
            if all(sp.issparse(p) for p in parts):
                raw = sp.vstack(parts, format="csr")[perm]
            else:
                raw = np.concatenate([p.toarray() if sp.issparse(p) else p for p in parts])[perm]
            return raw, np.concatenate(t_ins)[perm], np.concatenate(t_bases)[perm]

        return run
