"""Gene importance per dataset and group, read block by block; the consensus across datasets.

:meth:`scsig.Atlas.gene_importance` plans the work here: the groups of each dataset are found
from its cell metadata (:func:`dataset_groups`), then one task per dataset and range of
:data:`GENES_PER_TASK` genes (:func:`importance_task`) reads the range's gene columns in groups of
about :data:`scsig.atlas._store.GROUP_VALUES` values and adds each group's values into per
(gene, group) sums and non-zero counts. A task's memory is one read group plus those sums, never a
dataset's matrix; tasks are plain functions of picklable arguments, so they run in local threads or
on a :class:`distributed.Client` alike. :func:`importance_table` ranks the sums into the tidy
table, and :func:`consensus_table` aggregates such a table across datasets.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils._warn import user_stacklevel
from ._query import DATASET_KEY, FilterMissingColumnError, _filter_mask, _reader, shard_obs
from ._store import release_memory

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._query import ShardSpec

__all__ = [
    "GENES_PER_TASK",
    "GROUP_KEY",
    "DatasetGroups",
    "consensus_table",
    "dataset_groups",
    "importance_table",
    "importance_task",
]

GENES_PER_TASK = 2048
"""Genes per task: a dataset's genes are split into ranges of this many, read (and run) independently."""

GROUP_KEY = "group"
"""Column of the result that names the group (a value of the ``groupby`` column)."""

NEUTRAL = 0.5
"""Percentile a dataset gives, with ``missing="neutral"``, to a gene it does not measure: that of a gene in the middle."""


@dataclass(frozen=True)
class DatasetGroups:
    """One dataset's groups among the cells that pass the filter."""

    labels: list[str]
    """The groups with cells, in the column's order (categories) or sorted."""
    n_cells: np.ndarray
    """Cells per group."""
    n_unlabelled: int
    """Cells that pass the filter but have no label (NaN): left out."""


def _label_values(obs: pd.DataFrame, groupby: str) -> tuple[np.ndarray, list[str]]:
    """Each cell's label as text (``None`` for NaN) and the labels in the column's order."""
    col = obs[groupby]
    missing = col.isna().to_numpy()
    values = col.astype(str).to_numpy(dtype=object)
    values[missing] = None
    if isinstance(col.dtype, pd.CategoricalDtype):
        order = [str(c) for c in col.cat.categories]
    else:
        order = sorted({str(v) for v in values[~missing]})
    return values, order


def _label_codes(obs: pd.DataFrame, groupby: str, mask: np.ndarray | None, labels: Sequence[str]) -> np.ndarray:
    """Each cell's position in ``labels``; -1 for cells without a label, outside ``labels`` or the filter."""
    values, _ = _label_values(obs, groupby)
    codes = pd.Categorical(values, categories=list(labels)).codes.astype(np.int64)
    if mask is not None:
        codes[~mask] = -1
    return codes


def dataset_groups(spec: ShardSpec, groupby: str, obs_filter: Any, groups: Sequence[str] | None) -> DatasetGroups | str:
    """The dataset's groups (restricted to ``groups``), or why it has none: ``"no column"``, ``"no filter column"``."""
    obs = shard_obs(spec)
    if groupby not in obs.columns:
        return "no column"
    try:
        mask = _filter_mask(obs, spec.name, obs_filter)
    except FilterMissingColumnError:
        return "no filter column"
    values, order = _label_values(obs, groupby)
    if mask is not None:
        values = values[mask]
    labelled = values[pd.notna(values)]
    n_unlabelled = int(values.size - labelled.size)
    if groups is not None:
        wanted = set(groups)
        order = [g for g in order if g in wanted]
    counts = pd.Series(labelled).value_counts() if labelled.size else pd.Series(dtype=np.int64)
    labels = [g for g in order if counts.get(g, 0) > 0]
    return DatasetGroups(labels, np.array([int(counts[g]) for g in labels], dtype=np.int64), n_unlabelled)


@functools.cache
def _add_kernel():
    """A compiled kernel: add a CSC block's values into per (gene, group) sums and non-zero counts."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def add(data, indices, indptr, codes, sums, nonzero, measured):  # pragma: no cover - compiled
        for j in range(indptr.size - 1):
            for p in range(indptr[j], indptr[j + 1]):
                v = data[p]
                if v == 0:
                    continue
                measured[j] = True
                c = codes[indices[p]]
                if c >= 0:
                    sums[j, c] += v
                    nonzero[j, c] += 1

    return add


def importance_task(
    spec: ShardSpec, cols: np.ndarray, groupby: str, obs_filter: Any, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums and non-zero counts of the genes ``cols`` per group of one dataset: ``(sums, nonzero, measured)``.

    ``sums`` and ``nonzero`` are genes x groups (float64, int64) over the cells of each of
    ``labels`` that pass ``obs_filter``; ``measured`` says which genes have a non-zero value in any
    cell of the dataset. The columns are read in groups of about ``GROUP_VALUES`` values (see
    :meth:`~scsig.atlas._reader.ShardReader.column_groups`), so memory is one group, not the dataset.
    """
    obs = shard_obs(spec)
    codes = _label_codes(obs, groupby, _filter_mask(obs, spec.name, obs_filter), labels)
    n_groups = len(labels)
    sums = np.zeros((cols.size, n_groups), dtype=np.float64)
    nonzero = np.zeros((cols.size, n_groups), dtype=np.int64)
    measured = np.zeros(cols.size, dtype=bool)
    add = _add_kernel()
    for where, (data, indices, indptr) in _reader(spec).column_groups(cols):
        add(data, indices, indptr, codes, sums[where], nonzero[where], measured[where])
        del data, indices, indptr
    release_memory()  # the read groups' memory, freed in TensorStore's and this thread's arenas, back to the OS
    return sums, nonzero, measured


def _ranks(means: np.ndarray) -> np.ndarray:
    """Per column, 1 = highest mean; ties in gene order (as ``sg.tl.rank_genes_groups`` orders them)."""
    ranks = np.empty(means.shape, dtype=np.int64)
    order = np.arange(means.shape[0])
    for k in range(means.shape[1]):
        ranks[np.lexsort((order, -means[:, k])), k] = np.arange(1, means.shape[0] + 1)
    return ranks


def importance_table(
    per_dataset: list[tuple[str, DatasetGroups, np.ndarray, np.ndarray, np.ndarray]],
    genes: pd.Index,
    *,
    datasets: Sequence[str],
    groups: Sequence[str],
    n_genes: int | None,
) -> pd.DataFrame:
    """The tidy table from each dataset's ``(name, groups, sums, nonzero, measured)`` over ``genes``."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("d", "k", "g", "mean", "frac", "rank", "n")}
    gene_pos = np.arange(len(genes))
    dataset_pos = {n: d for d, n in enumerate(datasets)}
    for name, grp, sums, nonzero, measured in per_dataset:
        rows = np.flatnonzero(measured)
        n_cells = grp.n_cells.astype(np.float64)
        means = sums[rows] / n_cells[None, :]
        fracs = nonzero[rows] / n_cells[None, :]
        ranks = _ranks(means)
        mine = {g: k for k, g in enumerate(grp.labels)}
        for group_code, label in enumerate(groups):  # the union's order, so the table is sorted by group
            if label not in mine:
                continue
            k = mine[label]
            keep = np.argsort(ranks[:, k], kind="stable")
            if n_genes is not None:
                keep = keep[:n_genes]
            parts["d"].append(np.full(keep.size, dataset_pos[name], dtype=np.int32))
            parts["k"].append(np.full(keep.size, group_code, dtype=np.int32))
            parts["g"].append(gene_pos[rows[keep]])
            parts["mean"].append(means[keep, k])
            parts["frac"].append(fracs[keep, k])
            parts["rank"].append(ranks[keep, k])
            parts["n"].append(np.full(keep.size, grp.n_cells[k], dtype=np.int64))
    cat = {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in parts.items()}
    return pd.DataFrame(
        {
            DATASET_KEY: pd.Categorical.from_codes(cat["d"].astype(np.int32), categories=list(datasets)),
            GROUP_KEY: pd.Categorical.from_codes(cat["k"].astype(np.int32), categories=list(groups)),
            "gene": pd.Categorical.from_codes(cat["g"].astype(np.int32), categories=pd.Index(genes, dtype=object)),
            "mean_attribution": cat["mean"].astype(np.float64),
            "frac_cells": cat["frac"].astype(np.float64),
            "rank": cat["rank"].astype(np.int64),
            "n_cells": cat["n"].astype(np.int64),
        }
    )


def union_labels(found: Sequence[DatasetGroups]) -> list[str]:
    """The groups of several datasets in order of first appearance."""
    seen: dict[str, None] = {}
    for grp in found:
        seen.update(dict.fromkeys(grp.labels))
    return list(seen)


def warn_unlabelled(groupby: str, unlabelled: dict[str, int]) -> None:
    """Say which datasets had cells without a label (left out)."""
    if not unlabelled:
        return
    text = ", ".join(f"{n} in {d!r}" for d, n in unlabelled.items())
    warnings.warn(
        f"Cells without a {groupby!r} label (NaN) are left out: {text}. Label them before adding the dataset, "
        "or leave them out with obs_filter= to silence this.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


# ---------------------------------------------------------------------- consensus


_NEEDED = (DATASET_KEY, GROUP_KEY, "gene", "mean_attribution", "rank")


def _check_table(table: pd.DataFrame) -> dict[str, Any]:
    """The table's record; refuse a table that is not whole (truncated or filtered: genes would look unmeasured)."""
    missing = [c for c in _NEEDED if c not in table.columns]
    if missing:
        msg = f"importance must be the table of Atlas.gene_importance (columns {list(_NEEDED)}); it lacks {missing}."
        raise KeyError(msg)
    record = dict(table.attrs.get("scsig") or {})
    if record.get("n_genes") is not None:
        msg = (
            f"The table keeps only the top {record['n_genes']} genes per dataset and group, so every other gene would "
            "look unmeasured. Run Atlas.gene_importance with n_genes=None (the default) for a consensus."
        )
        raise ValueError(msg)
    measured = record.get("measured")
    if measured:
        sizes = table.groupby([DATASET_KEY, GROUP_KEY], observed=True).size()
        short = [(str(d), str(k)) for (d, k), n in sizes.items() if n != measured.get(str(d), n)]
        if short:
            msg = (
                f"The table lacks rows of genes measured in {short[:3]} (filtered after Atlas.gene_importance?); such "
                "genes would look unmeasured. Pass the whole table, or narrow the genes with gene_importance(genes=)."
            )
            raise ValueError(msg)
    return record


def _categorical(col: pd.Series) -> pd.Series:
    """``col`` as a categorical (categories in order of appearance unless it is one already)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col
    return pd.Series(pd.Categorical(col, categories=pd.unique(col)), index=col.index, name=col.name)


def consensus_table(table: pd.DataFrame, *, n_top: int, missing: str) -> pd.DataFrame:
    """Per (group, gene): the consensus of the per-dataset rankings of ``table`` (see ``Atlas.gene_consensus``)."""
    record = _check_table(table)
    keys = [DATASET_KEY, GROUP_KEY]
    by = table.groupby(keys, observed=True)
    size = by["gene"].transform("size").to_numpy(np.float64)
    low = by["mean_attribution"].rank(method="average", ascending=True).to_numpy(np.float64)
    pct = np.divide(low - 1.0, size - 1.0, out=np.ones_like(low), where=size > 1)
    frame = pd.DataFrame(
        {
            DATASET_KEY: table[DATASET_KEY].to_numpy(),
            GROUP_KEY: _categorical(table[GROUP_KEY]),
            "gene": _categorical(table["gene"]),
            "pct": pct,
            "top": (table["rank"].to_numpy() <= n_top).astype(np.int64),
            "mean": table["mean_attribution"].to_numpy(np.float64),
        }
    )
    per = frame.groupby([GROUP_KEY, "gene"], observed=True, sort=True).agg(
        pct=("pct", "sum"), n_measured=("pct", "size"), n_in_top=("top", "sum"), mean=("mean", "mean")
    )
    n_sets = frame.groupby(GROUP_KEY, observed=True)[DATASET_KEY].nunique()
    per["n_datasets"] = n_sets.reindex(per.index.get_level_values(0)).to_numpy(np.int64)
    if missing == "neutral":
        score = (per["pct"] + NEUTRAL * (per["n_datasets"] - per["n_measured"])) / per["n_datasets"]
    else:
        score = per["pct"] / per["n_measured"]
    out = per.reset_index()
    out["consensus_score"] = score.to_numpy(np.float64)
    order = np.lexsort(
        (
            out["gene"].cat.codes.to_numpy(),
            -out["mean"].to_numpy(),
            -out["n_in_top"].to_numpy(),
            -out["consensus_score"].to_numpy(),
            out[GROUP_KEY].cat.codes.to_numpy(),
        )
    )
    out = out.iloc[order].reset_index(drop=True)
    out["consensus_rank"] = out.groupby(GROUP_KEY, observed=True).cumcount().to_numpy(np.int64) + 1
    out = out.rename(columns={"mean": "mean_attribution"})
    out = out[
        [
            GROUP_KEY,
            "gene",
            "consensus_score",
            "consensus_rank",
            "n_in_top",
            "n_measured",
            "n_datasets",
            "mean_attribution",
        ]
    ]
    out.attrs["scsig"] = {"groupby": record.get("groupby"), "n_top": int(n_top), "missing": missing}
    return out
