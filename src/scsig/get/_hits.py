"""``sg.get.hit_fractions``: fractions of hit cells per sample and group, and tests between groups."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import UNS_KEY
from .._uns import get_record
from .._utils import resolve_adata
from .._utils._warn import user_stacklevel

HIT_RULE = ("key", "mode", "cut", "above", "reference")
"""What a hits record says about how the hits were called (kept with a fractions table for its plot's label)."""

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["hit_fractions", "hit_thresholds"]

_TEST_COLUMNS = [
    "group",
    "reference",
    "n_samples",
    "n_samples_reference",
    "mean_fraction",
    "mean_fraction_reference",
    "difference",
    "statistic",
    "pvalue",
    "padj",
]


def _as_list(groupby: str | Sequence[str]) -> list[str]:
    cols = [groupby] if isinstance(groupby, str) else [str(c) for c in groupby]
    if not cols:
        msg = "groupby must name at least one column of adata.obs."
        raise ValueError(msg)
    if len(set(cols)) != len(cols):
        msg = f"groupby lists a column twice: {cols}."
        raise ValueError(msg)
    return cols


def _levels(values: pd.Series) -> list[Any]:
    """The levels of an obs column in its own order (categories, else sorted)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return list(values.cat.categories)
    return sorted(values.dropna().unique().tolist(), key=str)


EXACT_LIMIT = 20_000
"""Up to this many ways to split the samples, Mann-Whitney p-values are exact (full permutation)."""


def _mwu(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided Mann-Whitney U of ``a`` vs ``b``: exact by enumeration when small, else asymptotic.

    The exact p-value enumerates all splits of the pooled values into groups of the same sizes
    (mid-ranks for ties, so ties are handled exactly): twice the smaller one-sided tail
    probability of the observed U, at most 1 (scipy's convention for two-sided tests).
    """
    from itertools import combinations
    from math import comb

    from scipy.stats import mannwhitneyu, rankdata

    pooled = np.concatenate([a, b])
    n_a, n_b = a.size, b.size
    if np.ptp(pooled) == 0:  # all equal: no evidence of a difference
        return float(n_a * n_b / 2), 1.0
    if comb(n_a + n_b, n_a) > EXACT_LIMIT:
        res = mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
        return float(res.statistic), float(min(1.0, res.pvalue))
    ranks = rankdata(pooled)
    offset = n_a * (n_a + 1) / 2
    u_obs = ranks[:n_a].sum() - offset
    u_all = np.array([ranks[list(idx)].sum() for idx in combinations(range(n_a + n_b), n_a)]) - offset
    upper = np.mean(u_all >= u_obs - 1e-9)
    lower = np.mean(u_all <= u_obs + 1e-9)
    return float(u_obs), float(min(1.0, 2 * min(upper, lower)))


def _tests(frame: pd.DataFrame, cols: list[str], levels: list[Any], reference: Any, min_samples: int) -> pd.DataFrame:
    from scipy.stats import false_discovery_control

    compare, strata = cols[0], cols[1:]
    rows = []
    frame = frame.loc[frame["fraction"].notna()]
    blocks = frame.groupby(strata, observed=True, sort=False) if strata else [((), frame)]
    for key, block in blocks:
        key = key if isinstance(key, tuple) else (key,)
        by_level = {lvl: block.loc[block[compare] == lvl, "fraction"].to_numpy() for lvl in levels}
        targets = [lvl for lvl in levels if lvl != reference] if reference != "rest" else levels
        for lvl in targets:
            a = by_level[lvl]
            b = (
                np.concatenate([by_level[o] for o in levels if o != lvl])
                if reference == "rest"
                else by_level[reference]
            )
            if a.size == 0:
                continue
            stat, p = _mwu(a, b) if min(a.size, b.size) >= min_samples else (np.nan, np.nan)
            mean_a = float(a.mean()) if a.size else np.nan
            mean_b = float(b.mean()) if b.size else np.nan
            rows.append(
                {
                    **dict(zip(strata, key, strict=True)),
                    "group": lvl,
                    "reference": reference,
                    "n_samples": int(a.size),
                    "n_samples_reference": int(b.size),
                    "mean_fraction": mean_a,
                    "mean_fraction_reference": mean_b,
                    "difference": mean_a - mean_b,
                    "statistic": stat,
                    "pvalue": p,
                }
            )
    tests = pd.DataFrame(rows, columns=[*strata, *_TEST_COLUMNS[:-1]])
    tests["padj"] = np.nan
    ok = tests["pvalue"].notna().to_numpy()
    if ok.any():
        tests.loc[ok, "padj"] = false_discovery_control(tests.loc[ok, "pvalue"].to_numpy(), method="bh")
    for col in strata:
        tests[col] = pd.Categorical(tests[col], categories=frame[col].cat.categories)
    return tests.reset_index(drop=True)


def _check_hit_fractions_args(
    obs: pd.DataFrame,
    hits_key: str,
    cols: list[str],
    *,
    sample_key: str | None,
    min_cells: int,
    min_samples: int,
    return_tests: bool,
) -> pd.Series:
    """Check the columns, the hit calls and the minimums; the hit column."""
    needed = [hits_key, *cols, *([sample_key] if sample_key is not None else [])]
    missing = [c for c in needed if c not in obs.columns]
    if missing:
        msg = f"Column(s) {missing} not in adata.obs (columns: {list(obs.columns)[:15]})."
        raise KeyError(msg)
    if sample_key is not None and sample_key in cols:
        msg = f"sample_key={sample_key!r} is also in groupby; the samples are the units within each group."
        raise ValueError(msg)
    reserved = {"n_cells", "n_hits", "fraction"} | (set(_TEST_COLUMNS) if return_tests else set())
    clash = [c for c in needed[1:] if c in reserved]
    if clash:
        msg = (
            f"Column(s) {clash} of adata.obs have the name of an output column of the table "
            f"({sorted(reserved)}); rename them first, e.g. adata.obs.rename(columns={{{clash[0]!r}: "
            f"{clash[0] + '_'!r}}}, inplace=True)."
        )
        raise ValueError(msg)
    hit = obs[hits_key]
    if hit.dtype != bool:
        values = pd.unique(hit.dropna())
        if hit.isna().any() or not set(values.tolist()) <= {0, 1}:
            msg = f"adata.obs[{hits_key!r}] must be boolean hit calls (see sg.tl.hits), got dtype {hit.dtype}."
            raise TypeError(msg)
    if min_cells < 1 or min_samples < 1:
        msg = f"min_cells and min_samples must be >= 1, got {min_cells} and {min_samples}."
        raise ValueError(msg)
    if return_tests and sample_key is None:
        msg = (
            "Tests compare per-sample fractions, so they need sample_key= (the column of sample IDs). "
            "Cells of one sample are not independent replicates."
        )
        raise ValueError(msg)
    return hit


def _check_test_design(obs: pd.DataFrame, condition: str, levels: list[Any], *, sample_key: str, reference: Any) -> Any:
    """Check that the tests can run (two levels, a known reference, one level per sample); the reference level."""
    if len(levels) < 2:
        msg = (
            f"adata.obs[{condition!r}] has {len(levels)} level(s) ({levels[:5]}); the tests compare its levels, "
            "so it needs at least 2. Put the condition first in groupby."
        )
        raise ValueError(msg)
    if reference is None:
        reference = levels[0]
    elif reference != "rest" and reference not in levels:
        msg = f"reference={reference!r} is not a level of {condition!r} (levels: {levels})."
        raise ValueError(msg)
    spans = obs[[sample_key, condition]].dropna().groupby(sample_key, observed=True)[condition].nunique()
    shared = spans.index[spans.to_numpy() > 1].tolist()
    if shared:
        msg = (
            f"Samples {shared[:5]} of {sample_key!r} have cells in several levels of {condition!r}, so the two sides "
            "of a test would share samples (e.g. a donor measured in both conditions): the Mann-Whitney test "
            "needs independent samples. Pass a sample_key whose samples each belong to one level (e.g. a "
            "sample ID per donor and condition), or return_tests=False and compare the donors' paired fractions "
            "yourself."
        )
        raise ValueError(msg)
    return reference


def _fraction_table(obs: pd.DataFrame, hit: pd.Series, keys: list[str], *, min_cells: int) -> pd.DataFrame:
    """Cells, hits and the hit fraction of each unit of ``keys``, in the obs columns' level order."""
    work = obs[keys].copy()
    work.columns = [f"k{i}" for i in range(len(keys))]  # private names: any obs column name is safe
    work["hit"] = hit.astype(bool).to_numpy()
    ks = list(work.columns[:-1])
    n_unlabeled = int(work[ks].isna().any(axis=1).sum())
    if n_unlabeled:
        warnings.warn(
            f"{n_unlabeled} cells have a missing value in {keys} and are left out.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    grouped = work.dropna(subset=ks).groupby(ks, observed=True, sort=False)["hit"]
    frame = pd.DataFrame({"n_cells": grouped.size(), "n_hits": grouped.sum()}).reset_index()
    frame.columns = [*keys, "n_cells", "n_hits"]
    frame["n_cells"] = frame["n_cells"].astype(np.int64)
    frame["n_hits"] = frame["n_hits"].astype(np.int64)
    frac = frame["n_hits"] / frame["n_cells"]
    frame["fraction"] = frac.where(frame["n_cells"] >= min_cells).astype(np.float64)

    for col in keys:  # each column's levels in the obs column's own order (categories, else sorted), as scanpy
        present = set(frame[col].tolist())
        frame[col] = pd.Categorical(frame[col], categories=[lv for lv in _levels(obs[col]) if lv in present])
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def hit_fractions(
    adata: Any,
    hits_key: str,
    *,
    groupby: str | Sequence[str],
    sample_key: str | None = None,
    min_cells: int = 10,
    min_samples: int = 2,
    reference: str | None = None,
    return_tests: bool = False,
    mod: str = "rna",
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    r"""Fraction of hit cells per sample (or per group), per condition and cell type, as a tidy table.

    The cells are split by the columns ``groupby`` (e.g. ``["condition", "cell_type"]``) and,
    with ``sample_key``, by sample. Each such unit gets its number of cells, of hits
    (``adata.obs[hits_key]``, as written by :func:`scsig.tl.hits`) and the fraction of hits. Units
    with fewer than ``min_cells`` cells get a missing (NaN) fraction: a fraction of a handful of
    cells is mostly noise.

    With ``return_tests=True`` the levels of the *first* ``groupby`` column (the condition) are
    compared within each combination of the other columns (e.g. within each cell type): a
    two-sided Mann-Whitney U test of the per-sample fractions of each level against those of
    ``reference``, Benjamini-Hochberg corrected over all rows of the table. The test needs
    independent samples, so a ``sample_key`` whose samples have cells in several levels of the
    first column (a donor measured in both conditions) is refused. The p-value is exact
    (all splits of the samples enumerated, ties included) when there are at most 20,000 splits
    (e.g. up to 7 + 7 samples), else from the tie-corrected normal approximation. The samples are the replicates, so this needs ``sample_key``, and each
    sample should belong to one condition (use a sample ID such as ``"sample_id"``, not a donor
    shared by conditions). A side with fewer than ``min_samples`` samples gets no p-value. With
    few samples the test has little power: with 2 samples per side the smallest possible two-sided
    p-value is 1/3. Comparing cells instead of samples would treat cells as independent replicates
    (pseudo-replication), so it is not offered.

    Parameters
    ----------
    adata
        Annotated data matrix with the hit column (a :class:`~mudata.MuData`: modality ``mod``).
    hits_key
        Boolean column of ``adata.obs`` with the hit calls (default name of
        :func:`scsig.tl.hits`: ``f"{key}_hit"``).
    groupby
        Column, or list of columns, of ``adata.obs`` to split by. The first is the one tested
        with ``return_tests=True``.
    sample_key
        Column of ``adata.obs`` with the samples; ``None``: one unit per group.
    min_cells
        Units with fewer cells get a NaN fraction (and are left out of the tests).
    min_samples
        Fewest samples each side of a test needs.
    reference
        Level of the first ``groupby`` column the others are tested against. ``None``: its first
        level (the first category, or the first sorted value). ``"rest"``: each level against all
        other levels pooled.
    return_tests
        Also return the table of tests.
    mod
        Modality of a :class:`~mudata.MuData`.

    Returns
    -------
    fractions
        One row per unit: the ``groupby`` columns and ``sample_key`` (when given), categorical with
        the levels in the order of the ``adata.obs`` column (its categories, else sorted), as
        scanpy orders groups; ``n_cells``, ``n_hits`` and ``fraction`` (``n_hits / n_cells``, NaN
        below ``min_cells``). Rows are sorted by the ``groupby`` columns, then by sample. An
        ``adata.obs`` column named like an output column (``n_cells``, ``n_hits``, ``fraction``,
        and with tests ``group``, ``pvalue``, ...) is refused: rename it first.
    tests
        Only with ``return_tests=True``: one row per tested level (and combination of the other
        ``groupby`` columns, which come first): ``group``, ``reference``, ``n_samples``,
        ``n_samples_reference``, ``mean_fraction``, ``mean_fraction_reference``, ``difference``
        (of the means), ``statistic`` (U of ``group``), ``pvalue`` and ``padj`` (BH).

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata as ad
    >>> import scsig as sg
    >>> obs = pd.DataFrame(
    ...     {
    ...         "condition": np.repeat(["ctrl", "stim"], 60),
    ...         "sample": np.repeat(["c1", "c2", "c3", "s1", "s2", "s3"], 20),
    ...         "score_hit": np.r_[np.arange(60) % 10 == 0, np.arange(60) % 2 == 0],
    ...     },
    ...     index=[f"cell{i}" for i in range(120)],
    ... )
    >>> adata = ad.AnnData(obs=obs)
    >>> fractions, tests = sg.get.hit_fractions(
    ...     adata, "score_hit", groupby="condition", sample_key="sample", return_tests=True
    ... )
    >>> fractions["fraction"].tolist()
    [0.1, 0.1, 0.1, 0.5, 0.5, 0.5]
    >>> tests[["group", "reference", "pvalue"]].round(3).values.tolist()
    [['stim', 'ctrl', 0.1]]
    """
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    obs = data.obs
    cols = _as_list(groupby)
    hit = _check_hit_fractions_args(
        obs,
        hits_key,
        cols,
        sample_key=sample_key,
        min_cells=min_cells,
        min_samples=min_samples,
        return_tests=return_tests,
    )
    levels = _levels(obs[cols[0]])
    if return_tests:
        reference = _check_test_design(obs, cols[0], levels, sample_key=sample_key, reference=reference)
    keys = [*cols, *([sample_key] if sample_key is not None else [])]
    frame = _fraction_table(obs, hit, keys, min_cells=min_cells)
    record = get_record(data, "hits", hits_key)
    if record is not None:  # how the hits were called, for the plots' labels
        frame.attrs[UNS_KEY] = {"hits_key": hits_key, **{k: record[k] for k in HIT_RULE if k in record}}
    if not return_tests:
        return frame
    return frame, _tests(frame, cols, levels, reference, min_samples)


def hit_thresholds(adata: Any, key: str, *, mod: str = "rna") -> pd.DataFrame:
    """The thresholds and counts of a hit call by :func:`scsig.tl.hits`, one row per group.

    Parameters
    ----------
    adata
        Annotated data matrix on which :func:`scsig.tl.hits` ran (a :class:`~mudata.MuData`:
        modality ``mod``).
    key
        The hit column (``key_added`` of :func:`scsig.tl.hits`, by default ``f"{key}_hit"``).
    mod
        Modality of a :class:`~mudata.MuData`.

    Returns
    -------
    A DataFrame indexed by group (``"all"`` without ``groupby``) with ``threshold`` (on the score
    scale), ``floor`` (the lowest score of the reference cells, which is never a hit; the highest
    with ``above=False``), ``n_reference`` (cells the threshold was set on), ``n_cells`` and
    ``n_hits``. Files written before these records were stored as lists give ``threshold`` and
    ``n_hits`` only.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> sg.tl.score(adata, ["g0", "g1", "g2"])
    >>> sg.tl.hits(adata, "score", reference={"group": "a"})
    >>> sg.get.hit_thresholds(adata, "score_hit").columns.tolist()
    ['threshold', 'floor', 'n_reference', 'n_cells', 'n_hits']
    """
    from .._uns import get_record, records

    _, data = resolve_adata(adata, mod=mod, read_only=True)
    rec = get_record(data, "hits", key)
    if rec is None:
        msg = f"No hit call {key!r} recorded in adata.uns['scsig']['hits'] (recorded: {list(records(data, 'hits'))}). Run sg.tl.hits first."
        raise KeyError(msg)
    if isinstance(rec.get("thresholds"), dict):  # older layout: dicts keyed by group
        groups = list(rec["thresholds"])
        frame = pd.DataFrame(
            {
                "threshold": [float(rec["thresholds"][g]) for g in groups],
                "n_hits": [int(rec.get("n_hits", {}).get(g, 0)) for g in groups],
            },
            index=pd.Index(groups, name="group"),
        )
        return frame
    frame = pd.DataFrame(
        {
            "threshold": np.asarray(rec["thresholds"], dtype=np.float64),
            "floor": np.asarray(rec["floors"], dtype=np.float64),
            "n_reference": np.asarray(rec["n_reference"], dtype=np.int64),
            "n_cells": np.asarray(rec["n_cells"], dtype=np.int64),
            "n_hits": np.asarray(rec["n_hits"], dtype=np.int64),
        },
        index=pd.Index([str(g) for g in rec["groups"]], name="group"),
    )
    return frame
