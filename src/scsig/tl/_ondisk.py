"""Attribution layers written to disk batch by batch: a standalone ``.h5ad`` file for ``store=``.

The file is an ordinary AnnData file (``obs``, ``var``, ``layers[key]`` as anndata's
``csr_matrix`` encoding, ``uns["scsig"]``) that :func:`anndata.read_h5ad` reads, with or without
``backed="r"``. The layer's arrays are resizable HDF5 datasets extended by each batch, so memory
holds one batch whatever the number of cells. The file is written under a hidden temporary name
next to the target and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import IN_MODEL_SUFFIX, UNS_KEY

if TYPE_CHECKING:
    import pandas as pd
    from scipy import sparse

__all__ = ["LayerWriter"]

CHUNK = 1 << 16
"""Elements per HDF5 chunk of ``data`` / ``indices`` / ``indptr``."""

ENCODING_VERSION = "0.1.0"


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".h5ad":
        msg = f"store={str(path)!r} must be a path ending in .h5ad (the layer is written as an AnnData file)."
        raise ValueError(msg)
    if path.exists():
        msg = f"store={str(path)!r} already exists; pass a new path (or delete the file) to write the layer there."
        raise FileExistsError(msg)
    if not path.parent.is_dir():
        msg = f"store={str(path)!r}: the folder {str(path.parent)!r} does not exist."
        raise FileNotFoundError(msg)
    return path


class LayerWriter:
    """Append CSR row blocks of a ``cells x n_vars`` layer to a new ``.h5ad`` file."""

    def __init__(self, path: str | Path, *, key: str, obs: pd.DataFrame, var: pd.DataFrame, n_vars: int) -> None:
        import h5py
        from anndata.io import write_elem

        self.path = _check_path(path)
        self.key = key
        self._var = var
        self._obs = obs
        self._n_vars = int(n_vars)
        self._n_obs = int(len(obs))
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        self._file = h5py.File(self._tmp, "w")
        try:
            self._file.attrs.update({"encoding-type": "anndata", "encoding-version": ENCODING_VERSION})
            write_elem(self._file, "layers", {})
            group = self._file["layers"].create_group(key)
            self._group = group

            def resizable(name: str, dtype: Any) -> Any:
                return group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK,))

            self._data = resizable("data", np.float32)
            self._indices = resizable("indices", np.int32)
            self._indptr = resizable("indptr", np.int64)
            self._indptr.resize((1,))
            self._indptr[0] = 0
        except BaseException:
            self.abort()
            raise
        self._nnz = 0
        self._rows = 0

    @staticmethod
    def _extend(ds: Any, values: np.ndarray) -> None:
        n = ds.shape[0]
        ds.resize((n + values.size,))
        if values.size:
            ds[n:] = values

    def append(self, block: sparse.csr_matrix) -> None:
        """Write the next rows (a CSR matrix over all ``n_vars`` columns)."""
        if block.shape[1] != self._n_vars:  # pragma: no cover - internal consistency
            msg = f"block has {block.shape[1]} columns, the layer {self._n_vars}"
            raise RuntimeError(msg)
        self._extend(self._data, block.data.astype(np.float32, copy=False))
        self._extend(self._indices, block.indices.astype(np.int32, copy=False))
        self._extend(self._indptr, block.indptr[1:].astype(np.int64) + self._nnz)
        self._nnz += int(block.nnz)
        self._rows += int(block.shape[0])

    def finish(self, *, record: dict, in_model: np.ndarray, obs_columns: dict[str, np.ndarray] | None = None) -> Any:
        """Write ``obs`` (with ``obs_columns`` added), ``var`` and ``uns``, close and rename the file into place; return the layer, backed."""
        import h5py
        from anndata.io import sparse_dataset, write_elem

        from ..atlas._manifest import jsonable

        if self._rows != self._n_obs:  # pragma: no cover - internal consistency
            msg = f"wrote {self._rows} rows, expected {self._n_obs}"
            raise RuntimeError(msg)
        self._group.attrs.update(
            {"encoding-type": "csr_matrix", "encoding-version": ENCODING_VERSION, "shape": (self._rows, self._n_vars)}
        )
        obs = self._obs.copy() if obs_columns else self._obs
        for column, values in (obs_columns or {}).items():
            obs[column] = values
        write_elem(self._file, "obs", obs)
        var = self._var.copy()
        var[f"{self.key}{IN_MODEL_SUFFIX}"] = np.asarray(in_model, dtype=bool)
        write_elem(self._file, "var", var)
        write_elem(self._file, "uns", {UNS_KEY: {"layers": {self.key: jsonable(record)}}})
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())
        self._file.close()
        self._tmp.replace(self.path)
        handle = h5py.File(self.path, "r")
        return sparse_dataset(handle["layers"][self.key])

    def abort(self) -> None:
        """Close and delete the partial file."""
        with contextlib.suppress(Exception):  # already closed
            self._file.close()
        if self._tmp.exists():
            self._tmp.unlink()
