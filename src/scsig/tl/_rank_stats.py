r"""Per-gene statistics of :func:`scsig.tl.rank_genes_groups`, computed one block of genes at a time.

The attribution layer is read in blocks of genes (columns). Each block is a CSC matrix over the
cells taking part in the test; nothing denser than one block is ever built. From a block come, for
every labelled group of cells, the sums, sums of squares and non-zero counts of each gene, and the
Mann-Whitney statistic computed sparse-aware: all zeros of a gene share one (average) rank, so only
the stored values are sorted.

Labels: ``codes`` gives each test cell an integer, ``0 .. G-1`` for the tested groups, ``G`` for the
reference group (when the reference is one group), ``-1`` for cells in no group (they count in the
"rest" reference only).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

__all__ = ["BLOCK_NNZ", "BlockStats", "accumulate", "mwu_z", "read_block"]

BLOCK_NNZ = 4_000_000
"""Stored values per block of genes (a block takes about 70 bytes per value while it is ranked)."""

ROW_CHUNK = 20_000
"""Cells read at once from a backed (on-disk) layer."""


def _nnz(x: Any) -> int:
    if sparse.issparse(x):
        return int(x.nnz)
    if hasattr(x, "group") and "indptr" in getattr(x, "group", {}):  # anndata's backed sparse dataset
        return int(x.group["indptr"][-1])
    return int(np.prod(x.shape))


def gene_blocks(x: Any, n_rows: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` column ranges holding about :data:`BLOCK_NNZ` stored values each."""
    n_vars = x.shape[1]
    per_gene = max(_nnz(x) / max(n_vars, 1) * n_rows / max(x.shape[0], 1), 1.0)
    size = int(max(1, min(n_vars, BLOCK_NNZ // per_gene)))
    return [(lo, min(lo + size, n_vars)) for lo in range(0, n_vars, size)]


@functools.cache
def _csr_block_kernels():
    """Compiled kernels that cut columns ``lo:hi`` out of a CSR matrix with sorted indices, by binary search per row."""
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def locate(indptr, indices, rows, lo, hi, starts, counts):  # pragma: no cover - compiled
        for r in numba.prange(rows.size):
            a, b = indptr[rows[r]], indptr[rows[r] + 1]
            row = indices[a:b]
            starts[r] = a + np.searchsorted(row, lo)
            counts[r] = a + np.searchsorted(row, hi) - starts[r]

    @numba.njit(parallel=True, cache=True, nogil=True)
    def gather(indices, data, starts, out_indptr, lo, out_indices, out_data):  # pragma: no cover - compiled
        for r in numba.prange(starts.size):
            s, o = starts[r], out_indptr[r]
            for k in range(out_indptr[r + 1] - o):
                out_indices[o + k] = indices[s + k] - lo
                out_data[o + k] = data[s + k]

    return locate, gather


def _csr_block(x: sparse.csr_matrix, rows: np.ndarray | None, lo: int, hi: int) -> sparse.csc_matrix:
    """Columns ``lo:hi`` of the rows ``rows`` of a CSR matrix with sorted indices: touches only those values."""
    locate, gather = _csr_block_kernels()
    rows = np.arange(x.shape[0], dtype=np.int64) if rows is None else rows.astype(np.int64, copy=False)
    starts, counts = np.empty(rows.size, dtype=np.int64), np.empty(rows.size, dtype=np.int64)
    locate(x.indptr, x.indices, rows, lo, hi, starts, counts)
    out_indptr = np.concatenate([[0], np.cumsum(counts)])
    out_indices, out_data = np.empty(out_indptr[-1], dtype=np.int32), np.empty(out_indptr[-1], dtype=np.float64)
    gather(x.indices, x.data, starts, out_indptr, lo, out_indices, out_data)
    return sparse.csr_matrix((out_data, out_indices, out_indptr), shape=(rows.size, hi - lo)).tocsc()


def read_block(x: Any, rows: np.ndarray | None, lo: int, hi: int) -> sparse.csc_matrix:
    """Columns ``lo:hi`` of the cells ``rows`` (all when ``None``) as CSC, without reading other columns in full.

    A CSR matrix with sorted indices (what :func:`scsig.tl.attribute` writes) is cut by a binary
    search in each row, reading only the block's values; other in-memory scipy matrices and arrays
    are sliced by scipy / numpy; backed layers are read
    :data:`ROW_CHUNK` cells at a time and only the block's columns are kept.
    """
    if sparse.issparse(x) and x.format == "csr" and x.has_sorted_indices:
        return _csr_block(x, rows, lo, hi)
    if sparse.issparse(x) or isinstance(x, np.ndarray):
        return sparse.csc_matrix(x[:, lo:hi] if rows is None else x[rows, lo:hi], dtype=np.float64)
    parts = []
    n = x.shape[0]
    for start in range(0, n, ROW_CHUNK):
        stop = min(start + ROW_CHUNK, n)
        if rows is None:
            chunk = x[start:stop]
        else:
            sel = rows[(rows >= start) & (rows < stop)]
            if sel.size == 0:
                continue
            chunk = x[start:stop][sel - start]
        parts.append(
            sparse.csr_matrix(chunk)[:, lo:hi]
            if sparse.issparse(chunk)
            else sparse.csr_matrix(np.asarray(chunk)[:, lo:hi])
        )
    return sparse.vstack(parts, format="csc", dtype=np.float64)


@functools.cache
def _ranks_kernel():
    """A compiled CSC kernel: average ranks of each column's stored values, a zero's rank and the tie term."""
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(indptr, data, n_total, rank, zero_rank, tie):  # pragma: no cover - compiled
        for j in numba.prange(indptr.size - 1):
            lo, hi = indptr[j], indptr[j + 1]
            m = hi - lo
            zeros = float(n_total - m)
            vals = data[lo:hi]
            order = np.argsort(vals, kind="mergesort")
            n_neg = 0
            acc = zeros**3 - zeros
            i = 0
            while i < m:
                v = vals[order[i]]
                k = i
                while k + 1 < m and vals[order[k + 1]] == v:
                    k += 1
                t = float(k - i + 1)
                avg = i + (t + 1) / 2 + (zeros if v > 0 else 0.0)
                if v < 0:
                    n_neg += k - i + 1
                for q in range(i, k + 1):
                    rank[lo + order[q]] = avg
                acc += t**3 - t
                i = k + 1
            zero_rank[j] = n_neg + (zeros + 1) / 2
            tie[j] = acc

    return kernel


def _column_ranks(indptr: np.ndarray, val: np.ndarray, n_total: int) -> tuple[np.ndarray, ...]:
    """Ranks of the stored non-zero values within their columns among ``n_total`` cells (zeros implicit).

    ``indptr`` and ``val`` are a CSC structure without stored zeros. Returns ``(rank of each entry,
    average rank of a zero per column, tie term sum(t^3 - t) per column)``. Ties get the average
    rank; the zeros of a column are one tie group between its negative and positive values.
    """
    n_cols = indptr.size - 1
    rank = np.empty(val.size, dtype=np.float64)
    zero_rank, tie = np.empty(n_cols), np.empty(n_cols)
    _ranks_kernel()(indptr.astype(np.int64), val.astype(np.float64, copy=False), n_total, rank, zero_rank, tie)
    return rank, zero_rank, tie


def _indptr(col: np.ndarray, n_cols: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n_cols))])


def mwu_z(rank_sum: np.ndarray, n1: float, n2: float, tie: np.ndarray) -> np.ndarray:
    r"""Tie-corrected normal approximation of the Mann-Whitney U of group 1 (0 when a gene is constant).

    :math:`U = R_1 - n_1(n_1+1)/2`, :math:`z = (U - n_1 n_2/2) / \sigma` with
    :math:`\sigma^2 = n_1 n_2/12 \, ((n+1) - \sum(t^3-t)/(n(n-1)))`.
    """
    n = n1 + n2
    u = rank_sum - n1 * (n1 + 1) / 2
    var = n1 * n2 / 12 * ((n + 1) - tie / (n * (n - 1)))
    sd = np.sqrt(np.clip(var, 0, None))
    return np.divide(u - n1 * n2 / 2, sd, out=np.zeros_like(u, dtype=np.float64), where=sd > 0)


@dataclass
class BlockStats:
    """Per-gene sums over the whole layer, filled block by block."""

    n_labels: int
    n_vars: int
    n_samples: int = 0
    sums: np.ndarray = field(init=False)
    sumsq: np.ndarray = field(init=False)
    nnz: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    z: np.ndarray = field(init=False)
    sample_sums: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        shape = (self.n_labels, self.n_vars)
        self.sums, self.sumsq, self.nnz = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.total = np.zeros((4, self.n_vars))  # sum, sum of squares, non-zeros, sum of |values| over all test cells
        self.z = np.zeros(shape)
        if self.n_samples:  # per (label, sample) sums; row n_labels holds every test cell of the sample
            self.sample_sums = np.zeros((self.n_labels + 1, self.n_samples, self.n_vars))


def _label_bincount(lab: np.ndarray, col: np.ndarray, w: np.ndarray | None, n_labels: int, nb: int) -> np.ndarray:
    keep = lab >= 0
    flat = np.bincount(lab[keep] * nb + col[keep], weights=None if w is None else w[keep], minlength=n_labels * nb)
    return flat.reshape(n_labels, nb)


def accumulate(
    stats: BlockStats,
    block: sparse.csc_matrix,
    lo: int,
    *,
    codes: np.ndarray,
    sizes: np.ndarray,
    reference_code: int | None,
    samples: np.ndarray | None,
    wilcoxon: bool,
) -> None:
    """Add the statistics of one block (columns ``lo:lo + block.shape[1]``) to ``stats``.

    ``codes`` labels the block's rows, ``sizes`` the number of cells per label; ``reference_code``
    is the reference group's label, ``None`` for the rest of the cells.
    """
    nb = block.shape[1]
    hi = lo + nb
    col = np.repeat(np.arange(nb), np.diff(block.indptr))
    keep = block.data != 0
    col, row, val = col[keep], block.indices[keep], block.data[keep]
    lab = codes[row]
    L = stats.n_labels
    stats.sums[:, lo:hi] += _label_bincount(lab, col, val, L, nb)
    stats.sumsq[:, lo:hi] += _label_bincount(lab, col, val * val, L, nb)
    stats.nnz[:, lo:hi] += _label_bincount(lab, col, None, L, nb)
    for i, w in enumerate((val, val * val, None, np.abs(val))):
        stats.total[i, lo:hi] += np.bincount(col, weights=w, minlength=nb)
    if samples is not None and stats.sample_sums is not None:
        S = stats.n_samples
        sam = samples[row]
        stats.sample_sums[:L, :, lo:hi] += _label_bincount(lab, sam * nb + col, val, L, S * nb).reshape(L, S, nb)
        stats.sample_sums[L, :, lo:hi] += np.bincount(sam * nb + col, weights=val, minlength=S * nb).reshape(S, nb)
    if wilcoxon:
        _accumulate_mwu(stats, col, val, lab, lo, nb, sizes=sizes, reference_code=reference_code, n_rows=codes.size)


def _accumulate_mwu(stats, col, val, lab, lo, nb, *, sizes, reference_code, n_rows) -> None:
    hi = lo + nb
    n_groups = stats.n_labels - (reference_code is not None)
    if reference_code is None:  # one ranking over all cells serves every group
        rank, zero_rank, tie = _column_ranks(_indptr(col, nb), val, n_rows)
        rsum = _label_bincount(lab, col, rank, stats.n_labels, nb)
        for g in range(n_groups):
            n1 = float(sizes[g])
            r1 = rsum[g] + (n1 - stats.nnz[g, lo:hi]) * zero_rank
            stats.z[g, lo:hi] = mwu_z(r1, n1, n_rows - n1, tie)
        return
    n_ref = float(sizes[reference_code])
    for g in range(n_groups):
        sel = (lab == g) | (lab == reference_code)
        n1 = float(sizes[g])
        rank, zero_rank, tie = _column_ranks(_indptr(col[sel], nb), val[sel], int(n1 + n_ref))
        in_g = lab[sel] == g
        r1 = np.bincount(col[sel][in_g], weights=rank[in_g], minlength=nb)
        r1 += (n1 - stats.nnz[g, lo:hi]) * zero_rank
        stats.z[g, lo:hi] = mwu_z(r1, n1, n_ref, tie)
