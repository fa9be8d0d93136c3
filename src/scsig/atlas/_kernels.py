"""Compiled kernels (numba) for turning cell-major attributions into gene-major storage.

Imported only when a shard is built. Every kernel takes ``lut``: for each input column, its position
in the atlas gene order, or -1 for a column that is not stored.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["count_parts", "extract_range", "merge_blocks", "part_bounds"]


def part_bounds(indptr: np.ndarray, n_parts: int) -> np.ndarray:
    """Row boundaries that split a CSR matrix into ``n_parts`` pieces of about equal nonzeros."""
    targets = np.linspace(0, indptr[-1], n_parts + 1)
    bounds = np.searchsorted(indptr, targets, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, indptr.size - 1
    return np.maximum.accumulate(bounds)


@numba.njit(parallel=True, cache=True, nogil=True)
def count_parts(indptr, indices, data, lut, bounds, counts):  # pragma: no cover - compiled
    """``counts[p, g]``: stored values of gene ``g`` in row part ``p``.

    Returns ``(nonzeros in columns outside lut, non-finite values)`` so the caller can refuse them.
    """
    n_parts = bounds.size - 1
    dropped = np.zeros(n_parts, np.int64)
    bad = np.zeros(n_parts, np.int64)
    for p in numba.prange(n_parts):
        for k in range(indptr[bounds[p]], indptr[bounds[p + 1]]):
            v = data[k]
            if not np.isfinite(v):
                bad[p] += 1
            g = lut[indices[k]]
            if g >= 0:
                counts[p, g] += 1
            elif v != 0:
                dropped[p] += 1
    return dropped.sum(), bad.sum()


@numba.njit(parallel=True, cache=True, nogil=True)
def extract_range(indptr, indices, data, lut, bounds, starts, g0, g1, out_data, out_idx):  # pragma: no cover - compiled
    """Gather genes ``[g0, g1)`` into CSC order: values and row numbers, rows ascending per gene.

    ``starts[p, g - g0]`` is where part ``p``'s first value of gene ``g`` goes in the output.
    """
    n_parts = bounds.size - 1
    for p in numba.prange(n_parts):
        pos = starts[p].copy()
        for r in range(bounds[p], bounds[p + 1]):
            for k in range(indptr[r], indptr[r + 1]):
                g = lut[indices[k]]
                if g >= g0 and g < g1:
                    j = pos[g - g0]
                    out_data[j] = data[k]
                    out_idx[j] = r
                    pos[g - g0] = j + 1


@numba.njit(cache=True, nogil=True)
def merge_blocks(seg, base, row_off, buf_data, buf_idx, out_data, out_idx):  # pragma: no cover - compiled
    """Stack CSC blocks (cells split by rows) gene by gene.

    Block ``b``'s values of local gene ``g`` are ``buf[base[b] + seg[b, g] : base[b] + seg[b, g + 1]]``
    with row numbers relative to the block; ``row_off[b]`` is the block's first cell.
    """
    n_blocks, n_genes = seg.shape[0], seg.shape[1] - 1
    j = 0
    for g in range(n_genes):
        for b in range(n_blocks):
            a = base[b] + seg[b, g]
            e = base[b] + seg[b, g + 1]
            for k in range(a, e):
                out_data[j] = buf_data[k]
                out_idx[j] = buf_idx[k] + row_off[b]
                j += 1
