"""The sources of :meth:`scsig.Atlas.attribute`: names, sizes, opening, checks, and the attribution options.

A source is an AnnData (in memory, backed or dask-backed) or the path of an ``.h5ad`` file. Every
source is checked before anything of it is committed: the structure of a sparse matrix (column
pointer, and the column indices of the rows a task attributes) here (:func:`check_source`), its
values (finite, non-negative, whole counts where the model needs them) batch by batch as the
attribution run reads them; a source that cannot be read or fails a check is reported by name and
the others go on.
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


def _check_structure(
    indptr: Any, indices: Any, *, shape: tuple[int, int], fmt: str, rows: tuple[int, int]
) -> str | None:
    """What is wrong with a stored CSR/CSC matrix's index pointer, or with the indices of ``rows`` (CSR), else None."""
    n_major, n_minor = shape if fmt == "csr" else shape[::-1]
    ptr = np.asarray(indptr[...] if not isinstance(indptr, np.ndarray) else indptr)  # n_major + 1 numbers: cheap
    if ptr.shape != (n_major + 1,):
        return f"its index pointer has {ptr.size} entries, {n_major + 1} expected"
    if ptr[0] != 0 or np.any(np.diff(ptr) < 0):
        return "its index pointer does not start at 0 or decreases somewhere"
    if int(ptr[-1]) != len(indices):
        return f"its index pointer ends at {int(ptr[-1])} but {len(indices)} indices are stored"
    start, stop = (int(ptr[rows[0]]), int(ptr[rows[1]])) if fmt == "csr" else (0, len(indices))
    for lo in range(start, stop, CHECK_BLOCK):
        block = np.asarray(indices[lo : min(lo + CHECK_BLOCK, stop)])
        if block.size and (int(block.min()) < 0 or int(block.max()) >= n_minor):
            return f"it stores indices outside its {n_minor} {'columns' if fmt == 'csr' else 'rows'}"
    return None


def check_source(adata: AnnData, *, layer: str | None, where: str, rows: tuple[int, int]) -> None:
    """Check a sparse source's structure before its cells ``rows`` are attributed.

    Reads the whole index pointer (one number per cell) and the indices of ``rows`` (of a CSR
    matrix; all of a CSC one), in blocks of :data:`CHECK_BLOCK`. The values are checked batch by
    batch as the attribution run reads them; dense and dask sources have no structure to check.
    """
    x = adata.X if layer is None else adata.layers[layer]
    arrays = _sparse_arrays(x)
    if arrays is None:
        return
    indptr, indices, data, fmt = arrays
    problem = _check_structure(indptr, indices, shape=tuple(adata.shape), fmt=fmt, rows=rows)
    if problem is None and len(indices) != len(data):
        problem = f"it stores {len(indices)} indices but {len(data)} values"
    if problem is not None:
        msg = (
            f"{where} is damaged: {problem}. Nothing of it was added; repair or re-export the file "
            "(e.g. rewrite it from the original data) and rerun."
        )
        raise ValueError(msg)


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
