"""Per-cell attribution totals, top-``k`` sums and norms of a shard, for ``Atlas.score(mode="top" | "cosine")``.

``mode="top"`` of :func:`scsig.tl.score` multiplies a cell's classic score by :math:`T_c / S_c`:
its attribution total over the sum of its ``top_k`` largest attributions. Both need the cell's
whole row, which a gene-major shard does not hold in one place, so they are computed once when a
dataset is added (at the ingest seal point, before the checksums are taken, so ``verify`` covers
them) and stored in the shard as float64 arrays, ``row_stats/total`` and ``row_stats/top``; the
manifest entry records ``top_k``. ``mode="cosine"`` divides by the cell's Euclidean norm, stored the
same way as ``row_stats/norm`` (the manifest records ``"norms": true``; shards without it compute it
from the shard's values on the first ``"cosine"`` query of a process). Shards without the sums
(added by an older scsig) and queries with
another ``top_k`` compute them from the shard's values, in cell blocks whose working memory is
bounded by :data:`ROW_STATS_BYTES`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ._reader import ShardReader

__all__ = [
    "ROW_STATS",
    "ROW_STATS_BYTES",
    "RowStats",
    "compute_row_norms",
    "compute_row_stats",
    "read_row_norms",
    "read_row_stats",
    "write_row_stats",
]

ROW_STATS = "row_stats"
"""Folder of a shard holding the per-cell ``total`` and ``top`` arrays."""

ROW_STATS_BYTES = 1 << 28
"""Working memory of the per-cell top-``k`` buffers (float32, cells x ``k``); more cells take more passes."""


@functools.cache
def _push_kernel():
    """A compiled kernel: add a CSC block's values to per-cell totals and bounded min-heaps of the largest values."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def push(indices, data, lo, hi, heap, count, totals):  # pragma: no cover - compiled
        k = heap.shape[1]
        for j in range(indices.size):
            r = indices[j]
            if r < lo or r >= hi:
                continue
            v = abs(data[j])
            if v == 0.0:
                continue
            i = r - lo
            totals[i] += v
            c = count[i]
            if c < k:  # insert and sift up
                pos = c
                heap[i, pos] = v
                count[i] = c + 1
                while pos > 0:
                    parent = (pos - 1) // 2
                    if heap[i, parent] > heap[i, pos]:
                        tmp = heap[i, parent]
                        heap[i, parent] = heap[i, pos]
                        heap[i, pos] = tmp
                        pos = parent
                    else:
                        break
            elif v > heap[i, 0]:  # replace the smallest kept value and sift down
                heap[i, 0] = v
                pos = 0
                while True:
                    left = 2 * pos + 1
                    if left >= k:
                        break
                    small = left
                    if left + 1 < k and heap[i, left + 1] < heap[i, left]:
                        small = left + 1
                    if heap[i, small] < heap[i, pos]:
                        tmp = heap[i, small]
                        heap[i, small] = heap[i, pos]
                        heap[i, pos] = tmp
                        pos = small
                    else:
                        break

    return push


def compute_row_stats(
    reader: ShardReader, n_obs: int, top_k: int, *, squares: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(totals, top sums)`` of every cell of the shard: the sum of its absolute values and of its ``top_k`` largest.

    Reads every gene of the shard once per block of cells; a block holds as many cells as fit
    :data:`ROW_STATS_BYTES` of ``top_k`` float32 values each. ``squares`` (float64, one per cell),
    when given, gets every cell's sum of squared values added during the first pass, so that the
    norms cost no extra read.
    """
    push = _push_kernel()
    totals = np.zeros(n_obs, dtype=np.float64)
    tops = np.zeros(n_obs, dtype=np.float64)
    cols = np.arange(reader.n_genes, dtype=np.int64)
    step = max(1, ROW_STATS_BYTES // (4 * top_k))
    for lo in range(0, n_obs, step):
        hi = min(n_obs, lo + step)
        heap = np.zeros((hi - lo, top_k), dtype=np.float32)
        count = np.zeros(hi - lo, dtype=np.int64)
        block_totals = np.zeros(hi - lo, dtype=np.float64)
        for _, (data, indices, _indptr) in reader.column_groups(cols):
            rows = indices.astype(np.int64, copy=False)
            push(rows, data, lo, hi, heap, count, block_totals)
            if squares is not None and lo == 0:  # every pass reads every cell's values
                _add_squares(squares, rows, data)
        totals[lo:hi] = block_totals
        tops[lo:hi] = heap.sum(axis=1, dtype=np.float64)
        del heap
    return totals, tops


def compute_row_norms(reader: ShardReader, n_obs: int) -> np.ndarray:
    """Euclidean norm of every cell's attributions in the shard (every gene read once, in groups)."""
    squares = np.zeros(n_obs, dtype=np.float64)
    cols = np.arange(reader.n_genes, dtype=np.int64)
    for _, (data, indices, _indptr) in reader.column_groups(cols):
        _add_squares(squares, indices.astype(np.int64, copy=False), data)
    return np.sqrt(squares)


def _add_squares(squares: np.ndarray, rows: np.ndarray, data: np.ndarray) -> None:
    values = np.asarray(data, dtype=np.float64)
    squares += np.bincount(rows, weights=values * values, minlength=squares.size)


class RowStats:
    """Collects the per-cell totals, top-``k`` sums and norms of a build's row blocks, in row order.

    Builds that see whole cells (an AnnData's layer, attribution batches) call it with each block's
    CSR ``(indptr, data)``: a compiled row-parallel pass over values already in memory, much cheaper
    than reading the finished gene-major shard again.
    """

    def __init__(self, top_k: int) -> None:
        self.top_k = int(top_k)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, indptr: np.ndarray, data: np.ndarray) -> None:
        from ..tl._score_modes import csr_row_norms, csr_totals_and_tops

        rows = np.asarray(indptr) - indptr[0]
        self._parts.append((*csr_totals_and_tops(rows, data, self.top_k), csr_row_norms(rows, data)))

    @classmethod
    def combine(cls, parts: Sequence[RowStats]) -> RowStats:
        """The sums of consecutive blocks of cells (each collected by its own :class:`RowStats`), in the given order."""
        if len({p.top_k for p in parts}) > 1:  # pragma: no cover - internal consistency
            msg = f"blocks collected top sums of different k: {sorted({p.top_k for p in parts})}"
            raise RuntimeError(msg)
        out = cls(parts[0].top_k)
        out._parts = [part for p in parts for part in p._parts]
        return out

    def result(self, n_obs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(totals, tops, norms)`` of every cell, or ``None`` when the blocks seen do not cover ``n_obs`` cells."""
        if sum(part[0].size for part in self._parts) != n_obs:
            return None
        if not self._parts:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        return tuple(np.concatenate([part[i] for part in self._parts]) for i in range(3))


def write_row_stats(
    shard: Path,
    *,
    layer: str,
    n_obs: int,
    top_k: int,
    computed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, int | bool]:
    """Store a finished shard's per-cell totals, top-``top_k`` sums and norms; the manifest's record of them.

    ``computed`` are the values collected during the build (:class:`RowStats`); without them they
    are computed from the shard (a gene-major build, e.g. a TileDB import).
    """
    from ._reader import ShardReader
    from ._store import _write_small

    if computed is None:
        squares = np.zeros(n_obs, dtype=np.float64)
        totals, tops = compute_row_stats(ShardReader(shard, layer, n_obs=n_obs), n_obs, top_k, squares=squares)
        computed = (totals, tops, np.sqrt(squares))
    totals, tops, norms = computed
    (shard / ROW_STATS).mkdir()
    _write_small(shard / ROW_STATS / "total", totals, "float64")
    _write_small(shard / ROW_STATS / "top", tops, "float64")
    _write_small(shard / ROW_STATS / "norm", norms, "float64")
    return {"top_k": int(top_k), "norms": True}


def read_row_stats(shard: Path, n_obs: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The stored ``(totals, top sums)`` of a shard (a damaged file raises, naming the dataset)."""
    totals, tops = _read_arrays(shard, n_obs, name, ("total", "top"))
    return totals, tops


def read_row_norms(shard: Path, n_obs: int, name: str) -> np.ndarray:
    """The stored per-cell norms of a shard (a damaged file raises, naming the dataset)."""
    return _read_arrays(shard, n_obs, name, ("norm",))[0]


def _read_arrays(shard: Path, n_obs: int, name: str, arrays: Sequence[str]) -> list[np.ndarray]:
    from ._checks import damaged
    from ._store import _context, require_tensorstore

    ts = require_tensorstore()
    out = []
    for array in arrays:
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(shard / ROW_STATS / array)},
            "fill_missing_data_reads": False,
        }
        try:
            values = np.asarray(ts.open(spec, read=True, context=_context()).result().read().result(), np.float64)
        except Exception as err:
            raise damaged(name, [f"its per-cell totals ({ROW_STATS}/{array}) cannot be read ({err})"]) from err
        if values.shape != (n_obs,) or not np.all(np.isfinite(values)):
            raise damaged(name, [f"its per-cell totals ({ROW_STATS}/{array}) do not hold one finite value per cell"])
        out.append(values)
    return out
