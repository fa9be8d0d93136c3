"""AnnData / MuData plumbing shared by the public functions."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from scipy import sparse

__all__ = ["get_matrix", "resolve_adata", "to_memory", "wrap_return"]


def _is_mudata(obj: Any) -> bool:
    return type(obj).__name__ == "MuData" and hasattr(obj, "mod")


def resolve_adata(data: Any, *, mod: str = "rna", copy: bool = False, read_only: bool = False) -> tuple[Any, AnnData]:
    """Return ``(container, adata)``: what the caller gets back, and the AnnData to work on.

    With a MuData, ``adata`` is its modality ``mod``; with ``copy=True`` the whole container is copied
    (a backed AnnData into memory).
    A view is made an actual AnnData (as anndata does on the first write) unless ``read_only``: callers
    that only read must leave the user's view as it is.
    """
    if _is_mudata(data):
        if mod not in data.mod:
            msg = f"The MuData has no modality {mod!r}; it has {list(data.mod)}. Pass mod= one of those."
            raise KeyError(msg)
        container = data.copy() if copy else data
        return container, container.mod[mod]
    if not isinstance(data, AnnData):
        msg = f"Expected an AnnData or MuData, got {type(data).__name__}."
        raise TypeError(msg)
    backed = data.isbacked
    if copy:
        # anndata cannot copy a backed object without a new file; the copy is in memory
        data = data.to_memory() if backed else data.copy()
    elif data.is_view and not read_only:
        # writing into a view makes anndata copy it behind the user's back; do it explicitly (a view of a
        # backed object is loaded into memory: anndata cannot copy it otherwise)
        data._init_as_actual(data.to_memory() if backed else data.copy())
    return data, data


def wrap_return(container: Any, *, copy: bool) -> Any:
    """``container`` when ``copy``, else ``None`` (scanpy's convention)."""
    return container if copy else None


def get_matrix(adata: AnnData, layer: str | None) -> np.ndarray | sparse.spmatrix:
    """``adata.layers[layer]`` or ``adata.X``, with an error naming the available layers."""
    if layer is None:
        if adata.X is None:
            msg = "adata.X is empty. Pass layer= the name of the layer holding the data."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)}). Pass layer=None to use adata.X."
        raise KeyError(msg)
    return adata.layers[layer]


def to_memory(x: Any) -> np.ndarray | sparse.spmatrix:
    """``x`` as an in-memory numpy or scipy matrix: read whole when backed (h5py/zarr) or a dask array."""
    if isinstance(x, np.ndarray) or sparse.issparse(x):
        return x
    out = x[0 : x.shape[0]]
    if hasattr(out, "compute"):  # dask
        out = out.compute()
    if not (isinstance(out, np.ndarray) or sparse.issparse(out)):
        out = np.asarray(out)
    return out
