r"""``sg.tl.rank_genes_groups``: genes ranked by their attributions per group, in scanpy's result format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._constants import RANK_KEY, SCANPY_RANK_KEY, UNS_KEY
from .._docs import doc_adata, doc_copy, doc_mod, doc_params
from .._utils import check_choice, resolve_adata, wrap_return
from ._rank_stats import BlockStats, accumulate, gene_blocks, read_block
from ._rank_tests import cell_tests, sample_tests
from ._score import attribution_layer

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CorrMethod", "RankMethod", "rank_genes_groups"]

RankMethod = Literal["wilcoxon", "t-test"]
"""Tests of :func:`rank_genes_groups`."""
CorrMethod = Literal["benjamini-hochberg", "bonferroni"]
"""Multiple-testing corrections of :func:`rank_genes_groups`."""


@dataclass
class _Design:
    """Who is compared with whom: labels of the test cells and, donor-aware, their samples."""

    groupby: str
    groups: list[str]
    reference: str
    codes: np.ndarray
    """Label per test cell: 0..G-1 the groups, G the reference group, -1 other cells (in the rest)."""
    rows: np.ndarray | None
    """The test cells (``None``: all cells)."""
    sizes: np.ndarray
    reference_code: int | None
    samples: np.ndarray | None = None
    sample_names: list[str] | None = None
    counts: np.ndarray | None = None
    """Cells per (label, sample); the last row counts every test cell of the sample."""


def _labels(data: Any, groupby: str) -> pd.Categorical:
    if groupby not in data.obs.columns:
        msg = f"groupby={groupby!r} is not a column of adata.obs (columns: {list(data.obs.columns)[:10]})."
        raise KeyError(msg)
    col = data.obs[groupby]
    n_missing = int(col.isna().sum())
    if n_missing:
        msg = (
            f"adata.obs[{groupby!r}] has no label (NaN) for {n_missing} of {len(col)} cells. Give them a label, "
            f"or leave them out first: adata[adata.obs[{groupby!r}].notna()].copy()."
        )
        raise ValueError(msg)
    cats = pd.Categorical(col.astype(str) if not isinstance(col.dtype, pd.CategoricalDtype) else col)
    return cats.remove_unused_categories().rename_categories(lambda c: str(c))


def _select(cats: pd.Categorical, groupby: str, groups: str | Sequence[str], reference: str) -> list[str]:
    present = [str(c) for c in cats.categories]
    if reference != "rest" and str(reference) not in present:
        msg = f"reference={reference!r} is not a group of adata.obs[{groupby!r}] (groups: {present[:20]}); pass one of them or 'rest'."
        raise ValueError(msg)
    if isinstance(groups, str) and groups == "all":
        chosen = [c for c in present if c != str(reference)]
    else:
        chosen = [str(g) for g in ([groups] if isinstance(groups, str) else groups)]
        unknown = [g for g in chosen if g not in present]
        if unknown or not chosen:
            msg = f"groups {unknown or chosen} not found in adata.obs[{groupby!r}] (groups: {present[:20]}); pass groups from that list or 'all'."
            raise ValueError(msg)
        if str(reference) in chosen:
            msg = f"reference={reference!r} is also in groups; a group cannot be its own reference. Leave it out of groups."
            raise ValueError(msg)
    if not chosen:
        msg = f"adata.obs[{groupby!r}] has no group besides the reference {reference!r}; there is nothing to compare."
        raise ValueError(msg)
    return chosen


def _design(data: Any, groupby: str, groups: str | Sequence[str], reference: str) -> _Design:
    """Labels of the test cells; a ValueError when a group or the reference has fewer than 2 cells."""
    cats = _labels(data, groupby)
    chosen = _select(cats, groupby, groups, reference)
    values = np.asarray(cats.astype(str))
    names = [*chosen, str(reference)] if reference != "rest" else chosen
    codes = np.full(values.size, -1, dtype=np.int64)
    for i, name in enumerate(names):
        codes[values == name] = i
    sizes = np.bincount(codes[codes >= 0], minlength=len(names))
    small = [(n, int(s)) for n, s in zip(names, sizes, strict=True) if s < 2]
    if reference == "rest":
        small += [
            (f"rest of {n}", int(values.size - s)) for n, s in zip(names, sizes, strict=True) if values.size - s < 2
        ]
    if small:
        msg = (
            f"Each group and its reference need at least 2 cells; too few: {small[:5]}. Leave such groups out "
            "with groups=, merge them with another group, or choose another reference."
        )
        raise ValueError(msg)
    rows = None if reference == "rest" else np.flatnonzero(codes >= 0)
    return _Design(
        groupby=groupby,
        groups=chosen,
        reference=str(reference),
        codes=codes if rows is None else codes[rows],
        rows=rows,
        sizes=sizes,
        reference_code=None if reference == "rest" else len(chosen),
    )


def _add_samples(design: _Design, data: Any, sample_key: str, *, paired: bool) -> None:
    """Sample codes of the test cells; refuses a group or reference with fewer than 2 samples."""
    if sample_key not in data.obs.columns:
        msg = f"sample_key={sample_key!r} is not a column of adata.obs (columns: {list(data.obs.columns)[:10]})."
        raise KeyError(msg)
    col = data.obs[sample_key]
    if col.isna().any():
        msg = f"adata.obs[{sample_key!r}] has no sample (NaN) for {int(col.isna().sum())} cells; label them or leave them out."
        raise ValueError(msg)
    cats = pd.Categorical(col.astype(str)).remove_unused_categories()
    samples = cats.codes.astype(np.int64)
    samples = samples if design.rows is None else samples[design.rows]
    n_s, n_l = len(cats.categories), design.sizes.size
    counts = np.zeros((n_l + 1, n_s))
    keep = design.codes >= 0
    np.add.at(counts, (design.codes[keep], samples[keep]), 1)
    counts[n_l] = np.bincount(samples, minlength=n_s)
    design.samples, design.sample_names, design.counts = samples, [str(c) for c in cats.categories], counts
    for g, name in enumerate(design.groups):
        n_in = int((counts[g] > 0).sum())
        ref = counts[design.reference_code] if design.reference_code is not None else counts[n_l] - counts[g]
        n_ref = int((ref > 0).sum())
        n_both = int(((counts[g] > 0) & (ref > 0)).sum())
        need = n_both if paired else min(n_in, n_ref)
        if need < 2:
            what = "samples with cells on both sides" if paired else "samples on each side"
            msg = (
                f"Group {name!r} has {n_in} and its reference {n_ref} {sample_key!r} sample(s) ({n_both} shared); "
                f"the donor-aware test needs at least 2 {what}. Pass sample_key=None to test cells, "
                "or leave the group out with groups=."
            )
            raise ValueError(msg)


def _check_output(data: Any, key_added: str, n_genes: int | None, *, overwrite: bool) -> None:
    if n_genes is not None and (
        isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or not 1 <= n_genes <= data.n_vars
    ):
        msg = f"n_genes={n_genes!r} must be an integer from 1 to the {data.n_vars} genes of adata; pass n_genes=None to keep all genes."
        raise ValueError(msg)
    old = data.uns.get(key_added)
    ours = isinstance(old, dict) and isinstance(old.get("params"), dict) and UNS_KEY in old["params"]
    if old is not None and not ours and not overwrite:
        whose = (
            "scanpy's sc.tl.rank_genes_groups result"
            if key_added == SCANPY_RANK_KEY
            else "a result scsig did not write"
        )
        msg = (
            f"adata.uns[{key_added!r}] holds {whose}; it is not replaced. Pass another key_added (the default is "
            f"{RANK_KEY!r}), or overwrite=True to replace it."
        )
        raise ValueError(msg)


def _provenance(data: Any, layer: str, **extra: Any) -> dict[str, Any]:
    """What ``params["scsig"]`` records: the attribution layer, its method and model, and the test's options."""
    rec = data.uns.get(UNS_KEY, {}).get("layers", {}).get(layer, {})
    model = rec.get("model", {}) if isinstance(rec, dict) else {}
    return {
        "attribution_layer": layer,
        "attribution_method": str(rec.get("method", "unknown")),
        "target": str(rec.get("target", "unknown")),
        "model": str(model.get("name", "unknown")) if isinstance(model, dict) else str(model),
        "model_checksum": str(model.get("checksum", "")) if isinstance(model, dict) else "",
        **extra,
    }


def _compute(x: Any, design: _Design, method: str) -> BlockStats:
    n_rows = x.shape[0] if design.rows is None else design.rows.size
    stats = BlockStats(design.sizes.size, x.shape[1], len(design.sample_names or []))
    for lo, hi in gene_blocks(x, n_rows):
        block = read_block(x, design.rows, lo, hi)
        accumulate(
            stats,
            block,
            lo,
            codes=design.codes,
            sizes=design.sizes,
            reference_code=design.reference_code,
            samples=design.samples,
            wilcoxon=method == "wilcoxon" and design.samples is None,
        )
    return stats


def _results(tables: dict[str, dict[str, np.ndarray]], var_names: pd.Index, n_genes: int) -> dict[str, Any]:
    """The record arrays of scanpy (top ``n_genes`` per group, by descending score) and the per-gene DataFrames."""
    fields = {
        "names": "O",
        "scores": "float32",
        "logfoldchanges": "float32",
        "pvals": "float64",
        "pvals_adj": "float64",
    }
    cols: dict[str, dict[str, np.ndarray]] = {f: {} for f in fields}
    for group, t in tables.items():
        order = np.lexsort((np.arange(t["scores"].size), -t["scores"]))[:n_genes]
        cols["names"][group] = np.asarray(var_names)[order].astype(object)
        for f in ("scores", "logfoldchanges", "pvals", "pvals_adj"):
            cols[f][group] = t[f][order]
    out: dict[str, Any] = {
        f: pd.DataFrame(cols[f]).to_records(index=False, column_dtypes=dtype) for f, dtype in fields.items()
    }
    for f in ("pts", "pts_rest", "means", "means_rest"):
        out[f] = pd.DataFrame({g: t[f] for g, t in tables.items()}, index=pd.Index(var_names, dtype=str))
    return out


@doc_params(doc_adata=doc_adata, doc_mod=doc_mod, doc_copy=doc_copy)
def rank_genes_groups(
    adata: Any,
    groupby: str,
    *,
    groups: str | Sequence[str] = "all",
    reference: str = "rest",
    layer: str | None = None,
    method: RankMethod | None = None,
    corr_method: CorrMethod = "benjamini-hochberg",
    sample_key: str | None = None,
    paired: bool = False,
    pseudocount: float | None = None,
    n_genes: int | None = None,
    key_added: str = RANK_KEY,
    overwrite: bool = False,
    mod: str = "rna",
    copy: bool = False,
) -> Any:
    r"""Rank genes by their attributions in each group against a reference, in scanpy's result format.

    Which genes carry more of the model's attribution in a group of cells than in the reference
    (the rest of the cells, or one group: ``groupby="stim", groups=["STIM"], reference="CTRL"`` is
    differential attribution between conditions). The result has the layout of
    :func:`scanpy.tl.rank_genes_groups`, so :func:`scanpy.get.rank_genes_groups_df` and scanpy's
    ``rank_genes_groups_dotplot`` / ``matrixplot`` / ``heatmap`` / ``stacked_violin`` (with ``key=``)
    read it unchanged (their colours show ``adata.X``; pass ``layer=`` the attribution layer to
    show attributions).

    Statistics, and why. Attributions are non-negative shares of a fixed per-cell total
    (``target_sum``, 1,000): mostly zero (a gene the cell does not express gets none), heavily
    right-skewed, and never normal. So the default test on cells, ``method="wilcoxon"``, is the
    Mann-Whitney U (Wilcoxon rank-sum) test, which assumes no distribution and is invariant to
    monotone rescaling of the shares. Its normal approximation is corrected for ties; the zeros of a
    gene are one large tie, and without the correction p-values would be too small. It is computed
    sparse-aware: the zeros share one average rank, only the stored values are sorted.
    ``scores`` are the tie-corrected z-scores of the group's U (positive: higher attributions in the
    group), ``pvals`` two-sided, without continuity correction (:func:`scipy.stats.mannwhitneyu`
    with ``method="asymptotic", use_continuity=False``). ``method="t-test"`` is Welch's t-test on the
    shares (scores are t statistics).

    Cells of one donor are not independent, so with many cells per donor a cell-level test
    gives p-values that are far too small for a condition effect. With ``sample_key`` the test is
    donor-aware: each sample's mean attribution per gene is computed for the group and the
    reference, and the test runs across samples: ``"t-test"`` (default) is Welch's t-test on the
    sample means (a pseudobulk comparison; with few samples a rank test cannot reach small
    p-values: 3 against 3 samples give at least p = 0.1), or paired (:func:`scipy.stats.ttest_rel`)
    over the samples with cells on both sides when ``paired=True``; ``"wilcoxon"`` is the
    Mann-Whitney U (paired: Wilcoxon signed-rank, zero differences split) test on the sample means,
    its score the signed normal quantile of its p-value. The Mann-Whitney p-value is exact, ties
    included, up to 20,000 ways to split the samples (7 against 7), so 2 against 2 samples give at
    least p = 1/3; the signed-rank p-value is exact for a gene without ties or zeros among its
    differences, and the tie-corrected normal approximation otherwise.

    ``logfoldchanges`` are the effect size: :math:`\log_2((m_g + c) / (m_r + c))`, with :math:`m_g`
    and :math:`m_r` the mean attribution of the gene in the group and the reference (donor-aware:
    the average of the sample means) and :math:`c` the ``pseudocount``: by default a tenth of the
    layer's mean absolute attribution per gene (``target_sum / n_genes / 10`` for a layer of
    :func:`scsig.tl.attribute`), so that genes with almost no attribution on both sides get a log
    fold change near 0 rather than a large one from two tiny numbers. (A signed layer, not written by
    :func:`scsig.tl.attribute`, is ranked all the same, negative values below the zeros; its log
    fold change is NaN where a mean is negative.)

    Parameters
    ----------
    {doc_adata}
    groupby
        Column of ``adata.obs`` with the groups. Every cell needs a label.
    groups
        Groups to test, or ``"all"`` (every group but the reference).
    reference
        ``"rest"`` (all other cells) or one group.
    layer
        Attribution layer; ``None`` takes the only one recorded by :func:`scsig.tl.attribute`.
    method
        ``"wilcoxon"`` (default on cells) or ``"t-test"`` (default with ``sample_key``).
    corr_method
        Multiple-testing correction over all genes of a group: ``"benjamini-hochberg"`` or ``"bonferroni"``.
    sample_key
        Column of ``adata.obs`` with the sample (donor) of each cell; makes the test donor-aware.
        Every group and reference need cells from at least 2 samples.
    paired
        With ``sample_key``: a paired test over the samples with cells in both the group and the reference.
    pseudocount
        :math:`c` of the log fold change; ``None``: a tenth of the layer's mean absolute attribution per gene.
    n_genes
        Genes stored per group (the top ones by score); ``None`` stores all.
    key_added
        Key in ``adata.uns``. A result there that scsig did not write (e.g. scanpy's own
        ``"rank_genes_groups"``) is not replaced unless ``overwrite=True``.
    overwrite
        Replace a result in ``adata.uns[key_added]`` that scsig did not write.
    {doc_mod}
    {doc_copy}

    Returns
    -------
    ``None``, or a copy when ``copy=True``, with ``adata.uns[key_added]`` holding

    ``"params"``
        ``groupby``, ``reference``, ``method``, ``use_raw`` (``False``), ``layer`` (the attribution
        layer), ``corr_method``, and ``"scsig"``: the layer's method, target and model, ``sample_key``,
        ``paired``, ``pseudocount``.
    ``"names"``, ``"scores"``, ``"logfoldchanges"``, ``"pvals"``, ``"pvals_adj"``
        Record arrays with one field per group, genes sorted by descending score.
    ``"pts"``, ``"pts_rest"``
        DataFrames (genes x groups): fraction of cells with a non-zero attribution in the group and in its reference.
    ``"means"``, ``"means_rest"``
        DataFrames (genes x groups): mean attribution in the group and in its reference (over cells).

    Examples
    --------
    >>> import scanpy as sc
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> sg.tl.rank_genes_groups(adata, "group")
    >>> df = sc.get.rank_genes_groups_df(adata, "b", key="rank_genes_groups_scsig")
    >>> list(df.columns)
    ['names', 'scores', 'logfoldchanges', 'pvals', 'pvals_adj', 'pct_nz_group', 'pct_nz_reference']
    """
    method = check_choice("method", method or ("t-test" if sample_key else "wilcoxon"), RankMethod)
    check_choice("corr_method", corr_method, CorrMethod)
    _, data_ro = resolve_adata(adata, mod=mod, read_only=True)
    key = attribution_layer(data_ro, layer)
    _check_output(data_ro, key_added, n_genes, overwrite=overwrite)
    design = _design(data_ro, groupby, groups, reference)
    if sample_key is not None:
        _add_samples(design, data_ro, sample_key, paired=paired)
    elif paired:
        msg = "paired=True pairs samples; pass sample_key= the column of adata.obs with each cell's sample."
        raise ValueError(msg)

    start = logg.info(f"ranking genes by attribution ({method}) in {len(design.groups)} group(s) of {groupby!r}")
    stats = _compute(data_ro.layers[key], design, method)
    if sample_key is None:
        tables, pc = cell_tests(stats, design, method=method, corr_method=corr_method, pseudocount=pseudocount)
    else:
        tables, pc = sample_tests(
            stats, design, method=method, corr_method=corr_method, pseudocount=pseudocount, paired=paired
        )
    result = _results(tables, data_ro.var_names, data_ro.n_vars if n_genes is None else int(n_genes))
    extra = {
        "sample_key": sample_key or "",
        "paired": bool(paired),
        "pseudocount": float(pc),
        "tie_correct": method == "wilcoxon",
    }
    params = {
        "groupby": groupby,
        "reference": design.reference,
        "method": method,
        "use_raw": False,
        "layer": key,
        "corr_method": corr_method,
        UNS_KEY: _provenance(data_ro, key, **extra),
    }

    container, data = resolve_adata(adata, mod=mod, copy=copy)
    data.uns[key_added] = {"params": params, **result}
    logg.info(f"    finished: added uns[{key_added!r}]", time=start)
    return wrap_return(container, copy=copy)
