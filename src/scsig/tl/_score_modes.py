r"""Scoring modes of ``sg.tl.score``: how a cell's attributions over a signature's genes become one number.

Every mode is a pure function of the attribution matrix (cells x genes, the normalized layer written
by :func:`scsig.tl.attribute`), the signature's columns and their coefficients (weights, already
divided by their sum for a mean). None of them reads counts or expression: a gene's attribution is 0
exactly where the model saw no input for it, so the number of genes a cell detects (in the model's
gene space) is the number of non-zero attributions in its row.

Why more than one mode: each cell's attributions sum to ``target_sum``. A deeper cell detects more
genes, the same total is spread over more of them, and every gene's share shrinks, so the classic
mean falls with sequencing depth inside a pure population. The modes differ in how they take the
cell's own attribution profile into account:

``"classic"``
    The classic score (what the published method computes): :math:`\sum_g c_g a_{cg}`.
``"top"``
    The classic score times :math:`T_c / S_c`, with :math:`T_c` the cell's row sum (the layer's
    ``target_sum``) and :math:`S_c` the sum of its ``top_k`` largest attributions: each cell is
    rescaled so that its ``top_k`` largest attributions, rather than all of them, sum to the
    layer's ``target_sum``. The genes a deeper cell adds are mostly small
    attributions outside its top ``top_k``, so this total does not grow with the number of genes
    detected. Cells with at most ``top_k`` detected genes keep their classic score.
``"rank"``
    Rank-based, from the top: in each cell, genes are ranked by attribution (1 = largest, among
    the genes with a non-zero attribution); a gene of rank :math:`r \le R` contributes
    :math:`(R - r + 1) / R`, others 0; the score is :math:`\sum_g c_g` of those, in [0, 1] for a
    mean. Genes a deeper cell adds enter at the bottom of the ranking, so the top ``R`` ranks (and the
    score) hardly move.
``"control_diff"`` / ``"control_ratio"``
    As :func:`scanpy.tl.score_genes`, on attributions: genes are put in ``n_bins`` bins of their
    mean attribution over all cells, ``ctrl_size`` control genes are drawn (seeded) from the bin of
    each signature gene, and the score is the signature's mean minus (or divided by) the mean of the
    control genes in the same cell.
``"cosine"`` (the default)
    The cosine similarity of the cell's attribution vector :math:`a_c` and the signature's
    coefficient vector :math:`c` (zero outside the signature):
    :math:`\sum_g c_g a_{cg} / (\lVert a_c \rVert_2 \lVert c \rVert_2)`, in [0, 1] for
    non-negative attributions, 1 when the cell's attributions are proportional to the coefficients.
    The Euclidean norm is dominated by the cell's largest attributions, so the many small ones a
    deeper cell adds hardly change it: like ``"top"`` without a ``top_k`` to choose, which also
    holds on data that keep few of the model's genes.
``"detected"``
    Attribution relative to the cell's mean attribution over its detected genes:
    :math:`\sum_g c_g a_{cg} n_c / T`, with :math:`n_c` the cell's number of non-zero attributions
    and :math:`T` its row sum (1 for a cell at the mean of its detected genes).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse

from .._utils._choices import check_choice, literal_values

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "check_mode",
    "control_genes",
    "csr_row_norms",
    "csr_totals_and_tops",
    "detected_counts",
    "mode_scores",
    "rank_matrix",
    "row_norms",
    "row_totals_and_tops",
    "top_k_problem",
    "top_sums",
]

ScoreMode = Literal["classic", "top", "rank", "cosine", "control_diff", "control_ratio", "detected"]
"""The scoring modes of :func:`scsig.tl.score`."""
MODES = literal_values(ScoreMode)

DEFAULT_MODE: ScoreMode = "cosine"
"""The mode of :func:`scsig.tl.score` (and of the functions that score like it) when none is given.

``"cosine"`` since version 0.2.0 (it was ``"classic"``): on cells the encoders never saw
(``docs/validity.md``, five training seeds, four datasets) it follows sequencing depth within a
cell type less than ``"top"`` and ``"classic"`` at the same marker AUROC, and it needs no
``top_k``. Code whose contract is "equals the reference package" passes ``mode="classic"``
explicitly.
"""

DEFAULT_TOP_K = 300
"""``top_k`` of ``mode="top"`` when none is given."""


_OPTIONS = {
    "classic": (),
    "top": ("top_k",),
    "rank": ("max_rank",),
    "control_diff": ("n_bins", "ctrl_size", "seed"),
    "control_ratio": ("n_bins", "ctrl_size", "seed"),
    "cosine": (),
    "detected": (),
}


def check_mode(mode: str, mode_kwds: Mapping[str, Any] | None) -> dict[str, int]:
    """Validate ``mode`` and its options; the options as a dict."""
    check_choice("mode", mode, ScoreMode)
    kwds = dict(mode_kwds or {})
    extra = sorted(set(kwds) - set(_OPTIONS[mode]))
    if extra:
        msg = f"mode_kwds {extra} do not apply to mode={mode!r} (it takes {list(_OPTIONS[mode])})."
        raise ValueError(msg)
    for opt, value in kwds.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or (value < 1 and opt != "seed"):
            msg = f"mode_kwds[{opt!r}] must be a{' non-negative' if opt == 'seed' else ' positive'} integer, not {value!r}."
            raise ValueError(msg)
    return {k: int(v) for k, v in kwds.items()}


def _csr(x: np.ndarray | sparse.spmatrix) -> sparse.csr_matrix:
    out = sparse.csr_matrix(x, dtype=np.float64)
    out.eliminate_zeros()
    return out


def _row_sums(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    return np.asarray(abs(_csr(x)).sum(axis=1), dtype=np.float64).ravel()


def detected_counts(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """Number of non-zero attributions per cell (a CSR layer is read from its row pointers, without a copy)."""
    if sparse.issparse(x) and x.format == "csr":
        counts = np.diff(x.indptr).astype(np.int64)
        stored_zeros = np.flatnonzero(x.data == 0)
        if stored_zeros.size:
            rows = np.searchsorted(x.indptr, stored_zeros, side="right") - 1
            counts -= np.bincount(rows, minlength=counts.size)
        return counts
    if sparse.issparse(x):
        return np.asarray((x != 0).sum(axis=1)).ravel().astype(np.int64)
    return np.count_nonzero(np.asarray(x), axis=1).astype(np.int64)


def top_k_problem(x: np.ndarray | sparse.spmatrix, top_k: int) -> str | None:
    """Why ``mode="top"`` with this ``top_k`` gives the classic score for most cells, or ``None``.

    A cell with at most ``top_k`` non-zero attributions keeps its classic score (its ``top_k``
    largest attributions are all of them). When the data hold a small part of the model's genes
    (a gene panel, or an object kept to its highly variable genes), that is most cells, and
    ``"top"`` falls with depth as ``"classic"`` does; reported from three quarters of the cells. A
    layer of at most ``top_k`` genes (a small model) is not reported: there ``"top"`` is the
    classic score by construction.
    """
    if x.shape[1] <= top_k or x.shape[0] == 0:
        return None
    n = detected_counts(x)
    share = float(np.mean(n <= top_k))
    if share < 0.75:
        return None
    median = float(np.median(n))
    suggestion = max(1, int(median // 2))
    return (
        f"mode='top' with top_k={top_k}: {share:.0%} of the cells have at most {top_k} non-zero "
        f"attributions (median {median:.0f}: the data hold few of the model's genes), and their "
        "score is the classic one, which falls with sequencing depth. Use mode='cosine' (no top_k "
        "to choose), or pass a top_k below the cells' detected genes, e.g. "
        f"mode_kwds={{'top_k': {suggestion}}} (half the median; see the validity docs)."
    )


def rank_matrix(x: np.ndarray | sparse.spmatrix, max_rank: int) -> sparse.csr_matrix:
    """Per cell, ``(R - r + 1) / R`` for the genes of rank ``r <= R`` (1 = largest non-zero value), 0 elsewhere.

    Ties get the ranks of their order in the cell's stored entries (any order is equally valid and
    they are rare among float attributions); the value depends on the attribution's magnitude only.
    """
    m = _csr(x)
    m.data = np.abs(m.data)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))  # by row, then largest first, then gene
    rank = np.empty(m.data.size, dtype=np.int64)
    rank[order] = np.arange(m.data.size) - m.indptr[rows[order]] + 1
    value = np.where(rank <= max_rank, (max_rank - rank + 1) / max_rank, 0.0)
    out = sparse.csr_matrix((value, m.indices.copy(), m.indptr.copy()), shape=m.shape)
    out.eliminate_zeros()
    return out


@functools.cache
def _top_kernel():
    """A compiled, row-parallel kernel: per CSR row, the sum of its absolute values and of its ``k`` largest."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def select(buf, nth):  # pragma: no cover - compiled
        """Reorder ``buf`` in place so that ``buf[nth]`` is its nth smallest value, smaller ones before it, larger after."""
        lo, hi = 0, buf.size - 1
        while hi > lo:
            mid = (lo + hi) // 2  # median of three as the pivot
            if buf[mid] < buf[lo]:
                buf[mid], buf[lo] = buf[lo], buf[mid]
            if buf[hi] < buf[lo]:
                buf[hi], buf[lo] = buf[lo], buf[hi]
            if buf[hi] < buf[mid]:
                buf[hi], buf[mid] = buf[mid], buf[hi]
            pivot = buf[mid]
            i, j = lo, hi
            while i <= j:
                while buf[i] < pivot:
                    i += 1
                while buf[j] > pivot:
                    j -= 1
                if i <= j:
                    buf[i], buf[j] = buf[j], buf[i]
                    i += 1
                    j -= 1
            if nth <= j:
                hi = j
            elif nth >= i:
                lo = i
            else:
                return

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(indptr, data, k, totals, tops):  # pragma: no cover - compiled
        for i in numba.prange(totals.size):
            a, b = indptr[i], indptr[i + 1]
            n = b - a
            total = 0.0
            if n <= k:
                for j in range(a, b):
                    total += abs(data[j])
                totals[i] = total
                tops[i] = total
                continue
            buf = np.empty(n, dtype=data.dtype)
            for j in range(n):
                v = abs(data[a + j])
                buf[j] = v
                total += v
            totals[i] = total
            # a threshold below the k-th largest value, from an evenly spaced sample, keeps the
            # selection to the few values above it (branch-free gather); a miss falls back to all
            step = max(1, n // 256)
            sample = buf[::step].copy()
            m = sample.size
            above = min(m - 1, (k * m) // n + (k * m) // (2 * n) + 8)  # about 1.5x the expected rank, plus a margin
            select(sample, m - 1 - above)
            threshold = sample[m - 1 - above]
            cand = np.empty(n, dtype=data.dtype)
            c = 0
            for j in range(n):
                v = buf[j]
                cand[c] = v
                c += v >= threshold
            if c < k:
                cand, c = buf, n
            part = cand[:c]
            select(part, c - k)
            top = 0.0
            for j in range(c - k, c):
                top += part[j]
            tops[i] = top

    return kernel


@functools.cache
def _norm_kernel():
    """A compiled, row-parallel kernel: per CSR row, the Euclidean norm of its values (summed in float64)."""
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(indptr, data, norms):  # pragma: no cover - compiled
        for i in numba.prange(norms.size):
            total = 0.0
            for j in range(indptr[i], indptr[i + 1]):
                v = np.float64(data[j])
                total += v * v
            norms[i] = np.sqrt(total)

    return kernel


def row_norms(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """Per cell, the Euclidean norm of its row (a CSR layer is read in place, without a copy)."""
    m = x if sparse.issparse(x) and x.format == "csr" else sparse.csr_matrix(x)
    return csr_row_norms(m.indptr, m.data)


def csr_row_norms(indptr: np.ndarray, data: np.ndarray) -> np.ndarray:
    """:func:`row_norms` of the CSR rows given by ``indptr`` (starting at 0) and ``data``."""
    norms = np.empty(indptr.size - 1, dtype=np.float64)
    _norm_kernel()(indptr, data, norms)
    return norms


def row_totals_and_tops(x: np.ndarray | sparse.spmatrix, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the sum of its absolute values and the sum of its ``top_k`` largest absolute values.

    A CSR layer is read in place by a compiled, row-parallel kernel (no copy of the matrix); other
    formats are converted to CSR first.
    """
    m = x if sparse.issparse(x) and x.format == "csr" else sparse.csr_matrix(x)
    return csr_totals_and_tops(m.indptr, m.data, top_k)


def csr_totals_and_tops(indptr: np.ndarray, data: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`row_totals_and_tops` of the CSR rows given by ``indptr`` (starting at 0) and ``data``."""
    n = indptr.size - 1
    totals = np.empty(n, dtype=np.float64)
    tops = np.empty(n, dtype=np.float64)
    _top_kernel()(indptr, data, int(top_k), totals, tops)
    return totals, tops


def top_sums(x: np.ndarray | sparse.spmatrix, top_k: int) -> np.ndarray:
    """Per cell, the sum of its ``top_k`` largest absolute values."""
    return row_totals_and_tops(x, top_k)[1]


def control_genes(
    gene_means: np.ndarray, cols: np.ndarray, *, pool: np.ndarray, n_bins: int, ctrl_size: int, seed: int
) -> np.ndarray:
    """Matched control genes for ``cols``: per signature gene, ``ctrl_size`` genes of its mean-attribution bin.

    Genes are ranked by ``gene_means`` among ``pool`` (a boolean mask of eligible genes) and cut
    into ``n_bins`` bins of (nearly) equal size; the signature's genes are never controls. The
    union of the draws is returned (sorted).
    """
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(pool)
    order = eligible[np.argsort(gene_means[eligible], kind="stable")]
    bin_of = np.full(gene_means.size, -1, dtype=np.int64)
    bin_of[order] = np.arange(order.size) * n_bins // max(order.size, 1)
    candidates = np.ones(gene_means.size, dtype=bool)
    candidates[cols] = False
    candidates &= pool
    chosen: set[int] = set()
    for b in np.unique(bin_of[cols]):
        if b < 0:
            continue
        in_bin = np.flatnonzero(candidates & (bin_of == b))
        if in_bin.size:
            take = rng.choice(in_bin, size=min(ctrl_size, in_bin.size), replace=False)
            chosen.update(int(g) for g in take)
    return np.array(sorted(chosen), dtype=np.int64)


def _check_n_bins(n_bins: int, n_eligible: int) -> None:
    """Refuse as many bins as eligible genes or more: every bin would hold one gene, and no gene a control."""
    if n_bins >= n_eligible:
        msg = (
            f"mode_kwds['n_bins']={n_bins} is too many bins for the {n_eligible} genes that can serve as controls: "
            "a bin of one gene holds no control for it, so n_bins must be below the number of genes, and well below "
            f"for every signature gene to find controls. Pass a smaller n_bins (at most {max(n_eligible - 1, 1)}; "
            "the default, 25, is sc.tl.score_genes' default)."
        )
        raise ValueError(msg)


def mode_scores(
    x: np.ndarray | sparse.spmatrix,
    cols: np.ndarray,
    coef: np.ndarray,
    *,
    mode: str,
    score_matrix: Callable[[np.ndarray | sparse.spmatrix, np.ndarray, np.ndarray], np.ndarray],
    pool: np.ndarray | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_rank: int = 200,
    n_bins: int = 25,
    ctrl_size: int = 50,
    seed: int = 0,
    cache: dict | None = None,
) -> tuple[np.ndarray, dict]:
    """Scores of one signature in ``mode`` and what the mode used (recorded with the score).

    ``score_matrix(x, cols, coef)`` computes ``x[:, cols] @ coef``; ``pool`` marks the genes that
    may serve as controls (default: all); ``cache`` (a dict) keeps per-layer work (ranks, gene
    means) between the signatures of one call.
    """
    cache = {} if cache is None else cache
    if mode == "classic":
        return score_matrix(x, cols, coef), {}
    if mode == "top":
        if ("top", top_k) not in cache:
            totals, top = row_totals_and_tops(x, top_k)
            cache["top", top_k] = np.divide(totals, top, out=np.zeros_like(top), where=top > 0)
        return score_matrix(x, cols, coef) * cache["top", top_k], {"top_k": int(top_k)}
    if mode == "rank":
        if ("rank", max_rank) not in cache:
            cache["rank", max_rank] = rank_matrix(x, max_rank)
        return score_matrix(cache["rank", max_rank], cols, coef), {"max_rank": int(max_rank)}
    if mode == "cosine":
        if "l2" not in cache:
            cache["l2"] = row_norms(x)
        norm = cache["l2"] * float(np.linalg.norm(coef))
        return np.divide(score_matrix(x, cols, coef), norm, out=np.zeros_like(norm), where=norm > 0), {}
    if mode == "detected":
        if "detected" not in cache:
            totals = _row_sums(x)
            n = detected_counts(x).astype(np.float64)
            cache["detected"] = np.divide(n, totals, out=np.zeros_like(n), where=totals > 0)
        return score_matrix(x, cols, coef) * cache["detected"], {}
    if mode in ("control_diff", "control_ratio"):
        if "gene_means" not in cache:
            cache["gene_means"] = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
        pool = np.ones(x.shape[1], dtype=bool) if pool is None else pool
        _check_n_bins(n_bins, int(np.count_nonzero(pool)))
        ctrl = control_genes(cache["gene_means"], cols, pool=pool, n_bins=n_bins, ctrl_size=ctrl_size, seed=seed)
        if ctrl.size == 0:
            msg = "No control genes are left (the signature covers every eligible gene); use another mode."
            raise ValueError(msg)
        sig = score_matrix(x, cols, coef)
        background = score_matrix(x, ctrl, np.full(ctrl.size, coef.sum() / ctrl.size))
        if mode == "control_diff":
            out = sig - background
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(background > 0, sig / np.where(background > 0, background, 1.0), np.nan)
        used = {
            "n_bins": int(n_bins),
            "ctrl_size": int(ctrl_size),
            "seed": int(seed),
            "n_control_genes": int(ctrl.size),
        }
        return out, used
    check_choice("mode", mode, ScoreMode)  # an unknown mode raises here
    msg = f"mode {mode!r} has no scoring rule."
    raise AssertionError(msg)
