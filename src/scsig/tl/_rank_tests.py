"""Per-group tables of :func:`scsig.tl.rank_genes_groups` from the accumulated block statistics.

:func:`cell_tests` treats cells as the units (Mann-Whitney from the block ranks, or Welch's t from
sums and sums of squares); :func:`sample_tests` first averages each sample's cells and tests the
sample means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as st

if TYPE_CHECKING:
    from ._rank_stats import BlockStats

__all__ = ["adjust", "cell_tests", "sample_tests"]


def adjust(pvals: np.ndarray, corr_method: str) -> np.ndarray:
    """Benjamini-Hochberg or Bonferroni adjusted p-values over one group's genes."""
    if corr_method == "bonferroni":
        return np.minimum(pvals * pvals.size, 1.0)
    return st.false_discovery_control(pvals, method="bh")


def _pseudocount(stats: BlockStats, n_cells: int, pseudocount: float | None) -> float:
    if pseudocount is not None:
        pc = float(pseudocount)
        if not np.isfinite(pc) or pc <= 0:
            msg = f"pseudocount must be a positive number, got {pseudocount!r}; pass None for the default."
            raise ValueError(msg)
        return pc
    mean = stats.total[3].sum() / (n_cells * stats.n_vars)  # mean |attribution| per gene and cell
    if not mean > 0:
        msg = "The attribution layer holds only zeros for these cells; check layer= (run sg.tl.attribute first)."
        raise ValueError(msg)
    return float(mean / 10)


def _sides(stats: BlockStats, design: Any, g: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(n group, n reference, [sum, sumsq, nnz] of the group, same of the reference, as arrays of shape (3, V))."""
    n_all = design.codes.size
    grp = np.stack([stats.sums[g], stats.sumsq[g], stats.nnz[g]])
    n1 = float(design.sizes[g])
    if design.reference_code is None:
        return n1, n_all - n1, grp, stats.total[:3] - grp
    r = design.reference_code
    ref = np.stack([stats.sums[r], stats.sumsq[r], stats.nnz[r]])
    return n1, float(design.sizes[r]), grp, ref


def _welch(m1, v1, n1, m2, v2, n2) -> tuple[np.ndarray, np.ndarray]:
    se2 = v1 / n1 + v2 / n2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (m1 - m2) / np.sqrt(se2)
        df = se2**2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    ok = se2 > 0
    t = np.where(ok, t, 0.0)
    p = np.where(ok, 2 * st.t.sf(np.abs(t), np.where(ok, df, 1.0)), 1.0)
    return t, p


def _var(s: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray]:
    mean = s[0] / n
    return mean, np.clip((s[1] - n * mean**2) / (n - 1), 0, None)


def cell_tests(
    stats: BlockStats, design: Any, *, method: str, corr_method: str, pseudocount: float | None
) -> tuple[dict[str, dict[str, np.ndarray]], float]:
    """``({group: {field: per-gene values}}, pseudocount)`` with cells as the units."""
    pc = _pseudocount(stats, design.codes.size, pseudocount)
    tables = {}
    for g, name in enumerate(design.groups):
        n1, n2, grp, ref = _sides(stats, design, g)
        (m1, v1), (m2, v2) = _var(grp, n1), _var(ref, n2)
        if method == "wilcoxon":
            scores = stats.z[g].copy()
            pvals = 2 * st.norm.sf(np.abs(scores))
        else:
            scores, pvals = _welch(m1, v1, n1, m2, v2, n2)
        tables[name] = _table(scores, np.minimum(pvals, 1.0), m1, m2, grp[2] / n1, ref[2] / n2, pc, corr_method)
    return tables, pc


def _table(scores, pvals, m1, m2, pts1, pts2, pc, corr_method) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore"):  # NaN where a mean is negative (a signed layer)
        lfc = np.log2((m1 + pc) / (m2 + pc))
    return {
        "scores": scores,
        "pvals": pvals,
        "pvals_adj": adjust(pvals, corr_method),
        "logfoldchanges": lfc,
        "means": m1,
        "means_rest": m2,
        "pts": pts1,
        "pts_rest": pts2,
    }


def _sample_means(stats: BlockStats, design: Any, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(group's sample means, reference's sample means, samples present in the group, in the reference)."""
    c, s = design.counts, stats.sample_sums
    if design.reference_code is None:
        ref_sum, ref_n = s[-1] - s[g], c[-1] - c[g]
    else:
        ref_sum, ref_n = s[design.reference_code], c[design.reference_code]
    in_g, in_r = c[g] > 0, ref_n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return s[g] / c[g][:, None], ref_sum / ref_n[:, None], in_g, in_r


def _ties(v: np.ndarray) -> np.ndarray:
    """Whether any value occurs twice, per column."""
    return (np.diff(np.sort(v, axis=0), axis=0) == 0).any(axis=0)


def _signed_rank(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wilcoxon signed-rank p-values (zero differences split) of paired columns, chosen gene by gene.

    Exact where a gene has no ties and no zero differences (up to 50 pairs), the tie-corrected normal
    approximation otherwise. scipy's ``method="auto"`` chooses once for the whole array, and its
    fallback for up to 13 pairs, a permutation test, takes about half a second per gene.
    """
    d = a - b
    exact = (a.shape[0] <= 50) & ~(d == 0).any(axis=0) & ~_ties(np.abs(d))
    pvals = np.ones(a.shape[1])
    for cols, m in ((exact, "exact"), (~exact, "asymptotic")):
        if cols.any():
            pvals[cols] = np.asarray(
                st.wilcoxon(a[:, cols], b[:, cols], axis=0, zero_method="zsplit", method=m).pvalue, float
            )
    return pvals


EXACT_SPLITS = 20_000
"""Up to this many ways to split the samples, the donor-aware Mann-Whitney p-values are exact."""


def _mannwhitney(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney U p-values of the columns of ``a`` against those of ``b``, gene by gene alike.

    Exact when the samples split in at most :data:`EXACT_SPLITS` ways: scipy's exact distribution for
    genes without ties; for genes with tied values every split of the pooled values into groups of
    the sizes of ``a`` and ``b`` is enumerated, with mid-ranks (twice the smaller tail probability of
    the observed U, at most 1). Otherwise the normal approximation (tie-corrected, with continuity
    correction). scipy's ``method="auto"`` picks one method for the whole array, the approximation
    as soon as any gene has a tie, so a gene's p-value would depend on the other genes and fall
    below the exact minimum with few samples. A gene with one value in every sample gets p = 1.
    """
    from itertools import combinations
    from math import comb

    n_a, n = a.shape[0], a.shape[0] + b.shape[0]
    if comb(n, n_a) > EXACT_SPLITS:
        return np.asarray(st.mannwhitneyu(a, b, axis=0, method="asymptotic").pvalue, float)
    ranks = st.rankdata(np.concatenate([a, b]), axis=0)
    tied = (np.diff(np.sort(ranks, axis=0), axis=0) == 0).any(axis=0)
    pvals = np.ones(ranks.shape[1])
    if (~tied).any():
        pvals[~tied] = st.mannwhitneyu(a[:, ~tied], b[:, ~tied], axis=0, method="exact").pvalue
    cols = np.flatnonzero(tied & (np.ptp(ranks, axis=0) > 0))  # one value everywhere: p = 1
    if cols.size:
        r = ranks[:, cols]
        u_obs = r[:n_a].sum(axis=0)
        splits = np.array(list(combinations(range(n), n_a)), dtype=np.intp)
        upper, lower = np.zeros(cols.size), np.zeros(cols.size)
        step = max(1, 4_000_000 // (cols.size * n_a))
        for lo in range(0, len(splits), step):
            u = r[splits[lo : lo + step]].sum(axis=1)  # (splits, genes): rank sum of the first group
            upper += (u >= u_obs - 1e-9).sum(axis=0)
            lower += (u <= u_obs + 1e-9).sum(axis=0)
        pvals[cols] = np.minimum(1.0, 2 * np.minimum(upper, lower) / len(splits))
    return pvals


def _sample_test(a: np.ndarray, b: np.ndarray, *, method: str, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "t-test":
            res = st.ttest_rel(a, b, axis=0) if paired else st.ttest_ind(a, b, axis=0, equal_var=False)
            scores, pvals = np.asarray(res.statistic, float), np.asarray(res.pvalue, float)
        else:
            pvals = _signed_rank(a, b) if paired else _mannwhitney(a, b)
            sign = np.sign(np.median(a - b, axis=0) if paired else a.mean(axis=0) - b.mean(axis=0))
            scores = sign * st.norm.isf(np.clip(pvals, 1e-300, 1.0) / 2)
    bad = ~np.isfinite(scores) | ~np.isfinite(pvals)
    return np.where(bad, 0.0, scores), np.where(bad, 1.0, pvals)


def sample_tests(
    stats: BlockStats, design: Any, *, method: str, corr_method: str, pseudocount: float | None, paired: bool
) -> tuple[dict[str, dict[str, np.ndarray]], float]:
    """``({group: {field: per-gene values}}, pseudocount)`` with the samples' mean attributions as the units."""
    pc = _pseudocount(stats, design.codes.size, pseudocount)
    tables = {}
    for g, name in enumerate(design.groups):
        ga, ra, in_g, in_r = _sample_means(stats, design, g)
        if paired:
            both = in_g & in_r
            a, b = ga[both], ra[both]
        else:
            a, b = ga[in_g], ra[in_r]
        scores, pvals = _sample_test(a, b, method=method, paired=paired)
        n1, n2, grp, ref = _sides(stats, design, g)
        table = _table(scores, np.minimum(pvals, 1.0), a.mean(0), b.mean(0), grp[2] / n1, ref[2] / n2, pc, corr_method)
        table["means"], table["means_rest"] = grp[0] / n1, ref[0] / n2
        tables[name] = table
    return tables, pc
