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


def _rank_pvalues(a: np.ndarray, b: np.ndarray, *, paired: bool) -> np.ndarray:
    """Wilcoxon signed-rank (paired, zeros split) or Mann-Whitney U p-values, per gene (column).

    The exact test where a gene has no ties (and, paired, no zero differences) in small samples, the
    normal approximation with tie correction otherwise, chosen gene by gene. (scipy's
    ``method="auto"`` chooses once for a whole array, so a tie in one gene would move every gene to
    the fallback; and its paired fallback for up to 13 pairs, a permutation test, takes about half a
    second per gene.)
    """
    if paired:
        d = a - b
        exact = (a.shape[0] <= 50) & ~(d == 0).any(axis=0) & ~_ties(np.abs(d))
        methods = ("exact", "asymptotic")

        def test(u, v, m):
            return st.wilcoxon(u, v, axis=0, zero_method="zsplit", method=m)
    else:
        exact = (a.shape[0] <= 8 or b.shape[0] <= 8) & ~_ties(np.concatenate([a, b]))
        methods = ("exact", "asymptotic")

        def test(u, v, m):
            return st.mannwhitneyu(u, v, axis=0, alternative="two-sided", method=m)

    pvals = np.ones(a.shape[1])
    for cols, m in zip((exact, ~exact), methods, strict=True):
        if cols.any():
            pvals[cols] = np.asarray(test(a[:, cols], b[:, cols], m).pvalue, float)
    return pvals


def _sample_test(a: np.ndarray, b: np.ndarray, *, method: str, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "t-test":
            res = st.ttest_rel(a, b, axis=0) if paired else st.ttest_ind(a, b, axis=0, equal_var=False)
            scores, pvals = np.asarray(res.statistic, float), np.asarray(res.pvalue, float)
        else:
            pvals = _rank_pvalues(a, b, paired=paired)
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
