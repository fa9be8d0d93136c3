"""The sources of :meth:`scsig.Atlas.attribute`: names, sizes, opening, checks, and the attribution options.

A source is an AnnData (in memory, backed or dask-backed) or the path of an ``.h5ad`` file. Every
source is checked before anything of it is committed (:func:`check_source`): the structure of a
sparse matrix (column pointer, column indices) and its values (finite, non-negative, whole counts
where the model needs them), block by block; a source that cannot be read or fails a check is
reported by name and the others go on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import _manifest as mf

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from anndata import AnnData

__all__ = ["check_options", "check_source", "for_worker", "make_jobs", "n_cells", "opened", "source_names"]


@contextlib.contextmanager
def opened(source: Any) -> Iterator[AnnData]:
    """The source as an AnnData: itself, or an ``.h5ad`` file opened backed (and closed on exit)."""
    import anndata as ad

    if isinstance(source, ad.AnnData):
        yield source
        return
    path = Path(source)
    if not path.is_file():
        msg = f"{str(path)!r} is not a file; pass paths of .h5ad files or AnnData objects."
        raise FileNotFoundError(msg)
    adata = ad.read_h5ad(path, backed="r")
    try:
        yield adata
    finally:
        adata.file.close()


_NOT_OPTIONS = {"adata", "model", "store", "copy", "mod", "progress", "completeness_key"}
"""Parameters of :func:`scsig.tl.attribute` that :meth:`scsig.Atlas.attribute` does not pass on."""


def attribute_defaults() -> dict[str, Any]:
    """:func:`scsig.tl.attribute`'s options and their defaults (those :meth:`scsig.Atlas.attribute` passes on)."""
    import inspect

    from ..tl._attribute import attribute

    params = inspect.signature(attribute).parameters.values()
    return {p.name: p.default for p in params if p.name not in _NOT_OPTIONS}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The attribution options, checked against :func:`scsig.tl.attribute`'s keywords."""
    from ..tl._attribute import _check_attribute_args

    allowed = list(attribute_defaults())
    unknown = [k for k in options if k not in allowed]
    if unknown:
        msg = f"Unknown attribution options {unknown}; Atlas.attribute passes on {allowed} (see sg.tl.attribute)."
        raise TypeError(msg)
    if options.get("key_added") is not None:
        mf.check_layer_name(options["key_added"], what="key_added")
    _check_attribute_args(
        options.get("method", "ig"),
        on_degenerate=options.get("on_degenerate", "raise"),
        n_steps=options.get("n_steps", 50),
        target_sum=options.get("target_sum", 1000.0),
        batch_size=options.get("batch_size"),
    )
    return dict(options)


def source_names(sources: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    """Dataset names: ``names``, or each file's stem; checked to be unique and non-empty."""
    from anndata import AnnData

    if names is None:
        out = []
        for k, src in enumerate(sources):
            if isinstance(src, AnnData):
                msg = f"sources[{k}] is an AnnData: pass names= (one dataset name per source)."
                raise ValueError(msg)
            out.append(Path(src).stem)
    else:
        out = [names] if isinstance(names, str) else [str(n) for n in names]
        if len(out) != len(sources):
            msg = f"names has {len(out)} entries but there are {len(sources)} sources; give one name per source."
            raise ValueError(msg)
    empty = [k for k, n in enumerate(out) if not n]
    if empty:
        msg = f"Dataset names must be non-empty strings (sources {empty})."
        raise ValueError(msg)
    dup = pd.Index(out)[pd.Index(out).duplicated()].unique().tolist()
    if dup:
        msg = f"Dataset names {dup} are given to more than one source; pass names= to tell them apart."
        raise ValueError(msg)
    return out


def n_cells(source: Any) -> int:
    """Cells of an AnnData or of an .h5ad file (read from the file's obs index, not the matrix)."""
    from anndata import AnnData

    if isinstance(source, AnnData):
        return int(source.n_obs)
    import h5py

    path = Path(source)
    if not path.is_file():
        msg = f"{str(path)!r} is not a file; pass paths of .h5ad files or AnnData objects."
        raise FileNotFoundError(msg)
    with h5py.File(path, "r") as fh:
        obs = fh["obs"]
        return int(obs[obs.attrs["_index"]].shape[0])


def for_worker(source: Any) -> Any:
    """What to send to a worker for ``source``: a backed AnnData's file path, else the source itself."""
    from anndata import AnnData

    if isinstance(source, AnnData) and source.isbacked:
        return str(source.filename)
    return str(source) if isinstance(source, Path) else source


# ---------------------------------------------------------------------- checks before anything is committed

CHECK_BLOCK = 1 << 24
"""Stored values read at a time while checking a source."""


def _sparse_arrays(x: Any) -> tuple[Any, Any, Any, str] | None:
    """``(indptr, indices, data, format)`` of a sparse matrix, in memory or backed (h5py/zarr arrays), else None."""
    from anndata.abc import CSCDataset, CSRDataset
    from scipy import sparse

    if isinstance(x, CSRDataset | CSCDataset):
        group = x.group
        return group["indptr"], group["indices"], group["data"], x.format
    if sparse.issparse(x) and x.format in ("csr", "csc"):
        return x.indptr, x.indices, x.data, x.format
    return None


def _check_structure(indptr: Any, indices: Any, data: Any, *, shape: tuple[int, int], fmt: str, where: str) -> None:
    """The column pointer and column (or row) indices of a stored CSR/CSC matrix are consistent."""
    n_major, n_minor = shape if fmt == "csr" else shape[::-1]
    ptr = np.asarray(indptr[...] if not isinstance(indptr, np.ndarray) else indptr)
    problem = None
    if ptr.shape != (n_major + 1,):
        problem = f"its index pointer has {ptr.size} entries, {n_major + 1} expected"
    elif ptr[0] != 0 or np.any(np.diff(ptr) < 0):
        problem = "its index pointer does not start at 0 and never decrease"
    elif int(ptr[-1]) != len(indices) or len(indices) != len(data):
        problem = (
            f"its index pointer ends at {int(ptr[-1])} but {len(indices)} indices and {len(data)} values are stored"
        )
    for lo in range(0, len(indices) if problem is None else 0, CHECK_BLOCK):
        block = np.asarray(indices[lo : lo + CHECK_BLOCK])
        if block.size and (int(block.min()) < 0 or int(block.max()) >= n_minor):
            problem = f"it stores indices outside its {n_minor} {'columns' if fmt == 'csr' else 'rows'}"
            break
    if problem is not None:
        msg = (
            f"{where} is damaged: {problem}. Nothing of it was added; repair or re-export the file "
            "(e.g. rewrite it from the original data) and rerun."
        )
        raise ValueError(msg)


def check_source(adata: AnnData, *, layer: str | None, where: str, require_integer: bool) -> None:
    """Check a source's counts before attributing it: sparse structure, then values, block by block.

    Reads the stored arrays once (a backed file in blocks of :data:`CHECK_BLOCK` values); dask
    arrays are checked batch by batch as they are attributed instead.
    """
    from .._utils._validate import check_counts

    x = adata.X if layer is None else adata.layers[layer]
    where = f"{where} ({'adata.X' if layer is None else f'layer {layer!r}'})"
    arrays = _sparse_arrays(x)
    if arrays is not None:
        indptr, indices, data, fmt = arrays
        _check_structure(indptr, indices, data, shape=tuple(adata.shape), fmt=fmt, where=where)
        for lo in range(0, len(data), CHECK_BLOCK):
            check_counts(np.asarray(data[lo : lo + CHECK_BLOCK]), where=where, require_integer=require_integer)
    elif isinstance(x, np.ndarray) or hasattr(x, "dtype") and not hasattr(x, "dask"):
        step = max(1, CHECK_BLOCK // max(1, adata.n_vars))
        for lo in range(0, adata.n_obs, step):
            check_counts(np.asarray(x[lo : lo + step]), where=where, require_integer=require_integer)


# ---------------------------------------------------------------------- jobs


def make_jobs(root: str, todo: Sequence[tuple[Any, str]]) -> tuple[list[dict[str, Any]], dict[str, Exception]]:
    """One job per ``(source, name)``; sources that cannot be read come back as ``{name: error}`` instead.

    A missing file is the caller's mistake and raises at once; a file that exists but cannot be
    read (truncated, not HDF5) fails only its own dataset.
    """
    jobs, failed = [], {}
    for source, name in todo:
        try:
            size = n_cells(source)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - reported per dataset
            failed[name] = OSError(
                f"Dataset {name!r}: source {str(source)!r} cannot be read ({type(err).__name__}: {err})."
            )
            continue
        jobs.append({"root": root, "source": for_worker(source), "name": name, "n_obs": size})
    return jobs, failed
