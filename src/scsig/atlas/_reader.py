"""Reading one shard: its CSC arrays through TensorStore, checked as they are read.

Opening checks the column pointer's structure; the first read of a bulk file checks its frame
against the seal (:mod:`._integrity`); every chunk TensorStore decodes is checked against its
crc32c; row indices must be cells of the dataset. Any failure is a :class:`~._checks.DamagedDatasetError`.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _integrity, _store
from ._checks import DamagedDatasetError, check_indptr, check_rows, damaged
from ._store import _context, require_tensorstore

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

__all__ = ["ShardReader"]


class ShardReader:
    """Read gene columns of one shard's attribution layer (opened once, shards never change).

    Opening checks the structure of the CSC arrays (see :mod:`scsig.atlas._integrity`); every read
    checks that the row indices are cells of the dataset. With ``strict`` (shards written with
    checksums), a missing chunk file is an error rather than zeros. With ``frames`` (the shard's
    recorded frame digests, ``(algorithm, {file: digest})``), the first read that touches a value or
    row-index shard file checks the file's chunk index and chunk crc32c trailers against the record
    (a few small reads); TensorStore then checks each chunk it decodes against its trailer. Every
    failure raises :class:`~scsig.atlas._checks.DamagedDatasetError` naming the dataset and how to
    repair it.
    """

    def __init__(
        self,
        path: Path,
        layer: str,
        *,
        name: str | None = None,
        n_obs: int | None = None,
        nnz: int | None = None,
        strict: bool = False,
        frames: tuple[str, dict[str, str]] | None = None,
    ) -> None:

        ts = require_tensorstore()
        ctx = _context()
        folder = path / "layers" / layer
        self.name = name if name is not None else path.name
        self.n_obs = n_obs
        self.layer = layer

        def open_(array: str) -> Any:
            spec = {
                "driver": "zarr3",
                "kvstore": {"driver": "file", "path": str(folder / array)},
                "fill_missing_data_reads": not strict,
            }
            return ts.open(spec, read=True, context=ctx).result()

        try:
            self.data = open_("data")
            self.indices = open_("indices")
            self.indptr = np.asarray(open_("indptr").read().result(), dtype=np.int64)
        except DamagedDatasetError:
            raise
        except Exception as err:
            raise damaged(self.name, [f"its layer {layer!r} cannot be opened ({type(err).__name__}: {err})"]) from err
        if self.indptr.ndim != 1:
            raise damaged(self.name, ["its column pointer (indptr) is not one-dimensional"])
        check_indptr(
            self.indptr,
            n_values=int(self.data.shape[0]),
            n_values_indices=int(self.indices.shape[0]),
            nnz=nnz,
            name=self.name,
        )
        self.path = path
        self.n_genes = self.indptr.size - 1
        self._frames = frames
        self._layouts: dict[str, tuple[int, int]] = {}
        self._framed: set[str] = set()
        self._frames_lock = threading.Lock()
        if frames is not None:
            for array in ("data", "indices"):
                try:
                    layout = _integrity.shard_layout(json.loads((folder / array / "zarr.json").read_text()))
                except (OSError, ValueError) as err:
                    raise damaged(self.name, [f"the metadata of its array {array} cannot be read ({err})"]) from err
                if layout is None:
                    raise damaged(self.name, [f"its array {array} is not stored as scsig writes it"])
                self._layouts[array] = layout
        self._n_files = sum(-(-int(self.indptr[-1]) // per_file) for per_file, _ in self._layouts.values())

    def _check_frames(self, ranges: Sequence[Sequence[int]]) -> None:
        """The first time a read touches a value or row-index shard file: its frame against the record."""
        if len(self._framed) == self._n_files:  # every file checked
            return
        todo = []
        for array, (per_file, _) in self._layouts.items():
            for a, b in ranges:
                for k in range(a // per_file, (b - 1) // per_file + 1):
                    rel = f"layers/{self.layer}/{array}/c/{k}"
                    if rel not in self._framed:
                        todo.append((array, rel))
        if not todo:
            return
        algorithm, frames = self._frames
        with self._frames_lock:
            todo = sorted({t for t in todo if t[1] not in self._framed})
            problems = []
            for array, rel in todo:
                problems += _integrity.check_frames(self.path, [rel], frames, self._layouts[array][1], algorithm)
            if problems:
                raise damaged(self.name, problems)
            self._framed.update(rel for _, rel in todo)

    def _start(self, cols: np.ndarray) -> tuple[Any, Any, np.ndarray]:
        """Start reading columns ``cols``: ``(data future, indices future, indptr)``; futures may be None."""
        ts = require_tensorstore()
        if cols.size and (int(cols.max()) >= self.n_genes or int(cols.min()) < 0):
            raise damaged(self.name, [f"it stores {self.n_genes} genes, fewer than the atlas's gene order"])
        starts, stops = self.indptr[cols], self.indptr[cols + 1]
        indptr = np.zeros(cols.size + 1, dtype=np.int64)
        np.cumsum(stops - starts, out=indptr[1:])
        nonempty = [(int(a), int(b)) for a, b in zip(starts, stops, strict=True) if b > a]
        if not nonempty:
            return None, None, indptr
        # merge adjacent ranges, then one virtual concatenation per array: one parallel read each
        merged = [list(nonempty[0])]
        for a, b in nonempty[1:]:
            if a == merged[-1][1]:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        if len(merged) == 1:
            ((a, b),) = merged
            fd, fi = self.data[a:b].read(), self.indices[a:b].read()
        else:
            fd = ts.concat([self.data[a:b] for a, b in merged], axis=0).read()
            fi = ts.concat([self.indices[a:b] for a, b in merged], axis=0).read()
        if self._frames is not None:  # while TensorStore reads; nothing is handed out before this passes
            self._check_frames(merged)
        return fd, fi, indptr

    def _finish(self, started: tuple[Any, Any, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:

        fd, fi, indptr = started
        if fd is None:
            return np.empty(0, np.float32), np.empty(0, np.int32), indptr
        try:
            data, indices = np.asarray(fd.result()), np.asarray(fi.result())
        except Exception as err:
            raise damaged(self.name, [f"reading its attributions fails ({type(err).__name__}: {err})"]) from err
        if self.n_obs is not None:
            check_rows(indices, self.n_obs, self.name)
        return data, indices, indptr

    def columns(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(data, row_indices, indptr)`` of the CSC sub-matrix of columns ``cols`` (any order)."""
        return self._finish(self._start(cols))

    def column_groups(
        self, cols: np.ndarray, *, group_values: int | None = None, ahead: int = 2
    ) -> Iterator[tuple[slice, tuple]]:
        """Read ``cols`` in consecutive groups of about ``group_values`` values.

        Yields ``(positions in cols, (data, row_indices, indptr))``. Up to ``ahead`` groups are read
        ahead of the one handed out, so the caller's work on a group overlaps the decoding of the
        next ones while memory stays bounded by ``(ahead + 1) * group_values`` values.
        """
        group_values = _store.GROUP_VALUES if group_values is None else group_values  # looked up here: tests shrink it
        nnz = np.cumsum(self.indptr[cols + 1] - self.indptr[cols])
        edges = [0]
        while edges[-1] < cols.size:
            base = nnz[edges[-1] - 1] if edges[-1] else 0
            edges.append(
                min(cols.size, max(edges[-1] + 1, int(np.searchsorted(nnz, base + group_values, side="right"))))
            )
        groups = [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        pending: list[tuple[slice, tuple]] = []
        for k in range(len(groups)):
            while len(pending) <= ahead and k + len(pending) < len(groups):
                where = groups[k + len(pending)]
                pending.append((where, self._start(cols[where])))
            where, started = pending.pop(0)
            yield where, self._finish(started)
