"""Attributing one dataset straight into its shard, batch by batch (in-process, or in blocks on a cluster).

:func:`attribute_dataset` attributes a (backed or dask-backed) AnnData batch by batch and feeds
the batches into a shard build, so memory does not grow with the number of cells. On a cluster a
large dataset is split into blocks of whole batches (:func:`attribute_block`, each spilled into the
staging folder) merged by :func:`merge_blocks`. These are plain functions of picklable arguments.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils._warn import user_stacklevel
from ._build import _grouped, _shard_contents, finish_staged, shard_obs_frame
from ._rowstats import RowStats
from ._sources import attribute_defaults, check_options, check_source, opened
from ._staging import staging
from ._store import BLOCK_NNZ, Spill, build_shard_from_spills, spill_rows

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from anndata import AnnData


__all__ = ["NamedWarnings", "attribute_block", "attribute_dataset", "block_bounds", "merge_blocks", "pinned_threads"]


class NamedWarnings:
    """Re-issue the warnings raised inside the block so that each names the dataset ``name`` they concern.

    A warning whose message already names the dataset is re-issued as it is, the others start with
    ``dataset 'name':``; each points at the user's line. :func:`warnings.catch_warnings` holds
    process-wide state: use this where one dataset runs at a time in the process (in this process
    one after the other, or on a dask worker with one thread).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._catcher = warnings.catch_warnings(record=True)
        self._caught: list[warnings.WarningMessage] = []

    def __enter__(self) -> NamedWarnings:
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: object) -> None:
        self._catcher.__exit__(*exc)
        for w in self._caught:
            text = str(w.message)
            if repr(self.name) not in text:
                text = f"dataset {self.name!r}: {text}"
            try:
                message = w.category(text)
            except TypeError:  # a category whose constructor takes more than a message: its message as it was
                message = w.message
            warnings.warn(message, stacklevel=user_stacklevel())


def pinned_threads(n_jobs: int | None) -> contextlib.AbstractContextManager:
    """Torch, numba and BLAS/OpenMP pools limited to ``n_jobs`` threads (``None``: left as they are).

    Torch's and numba's counts are per calling thread, so a task sets them itself: a dask worker's
    task thread otherwise starts with as many as the machine has cores, and two worker processes on
    two cores then fight over them.
    """
    from .._utils import threads

    stack = contextlib.ExitStack()
    if n_jobs is None:
        return stack
    stack.enter_context(threads(n_jobs, numba=True))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (scanpy)
        return stack
    stack.enter_context(threadpool_limits(limits=max(1, int(n_jobs))))
    return stack


def _prepare(
    source: Any,
    adata: AnnData,
    name: str,
    model: Any,
    options: Mapping[str, Any],
    *,
    genes: Sequence[str],
    gene_order_hash: str,
    obs_columns: Sequence[str] | None,
    block: tuple[int, int] | None = None,
) -> tuple[Any, pd.DataFrame, tuple[int, int]]:
    """Set up the attribution run of the opened source (checked against the atlas's model) and check its stored rows.

    Returns ``(run, shard obs, rows)``: ``rows`` are the cells this task attributes, all of them, or
    block ``block[0]`` of ``block[1]`` (whole batches). Only those rows' sparse structure is read
    here; their values are checked batch by batch as the run reads them, with messages naming the dataset.
    """
    import inspect

    from ..tl._attribute_run import _set_up

    opts = attribute_defaults() | check_options(options)
    takes = inspect.signature(_set_up).parameters
    where = f"Dataset {name!r}" + (f" (file {str(source)!r})" if isinstance(source, str | Path) else "")
    run = _set_up(adata, model, **{k: v for k, v in opts.items() if k in takes})
    if run.model.gene_order_hash != gene_order_hash:
        msg = (
            f"Dataset {name!r}: model {run.model.name!r} has gene order hash {run.model.gene_order_hash[:12]} "
            f"({run.model.n_genes} genes), but the atlas expects {gene_order_hash[:12]} ({len(genes)} genes). "
            "Attribute with the atlas's model, or build one atlas per model."
        )
        raise ValueError(msg)
    run.where = f"{where} ({run.where})"
    rows = (0, adata.n_obs)
    if block is not None:
        rows = tuple(int(v) for v in block_bounds(adata.n_obs, block[1], run.batch_size)[block[0] : block[0] + 2])
    check_source(adata, layer=run.layer, where=run.where, rows=rows)
    return run, shard_obs_frame(adata.obs, obs_columns, name), rows


def _spill_cells(run: Any, rows: tuple[int, int], folder: Path, name: str, on_cells: Any) -> tuple[Spill, RowStats]:
    """Attribute cells ``rows`` batch by batch into a gene-major spill (pass 1 of the shard build).

    Also returns those cells' attribution totals and top-``k`` sums, collected from the batches.
    """
    from ..tl._attribute_batches import _batches
    from ..tl._score_modes import DEFAULT_TOP_K

    n_genes = run.model.n_genes
    identity = np.arange(n_genes, dtype=np.int64)  # the attributions come in the model's (= atlas's) gene order
    blocks = _grouped(_batches(run, on_cells=on_cells, rows=rows), BLOCK_NNZ)
    row_stats = RowStats(DEFAULT_TOP_K)
    spill = spill_rows(blocks, identity, n_genes=n_genes, name=name, folder=folder, row0=rows[0], on_rows=row_stats)
    return spill, row_stats


def _merge_and_commit(
    root: Path,
    staged: Path,
    spills: Sequence[Spill],
    *,
    name: str,
    key: str,
    record: dict[str, Any],
    obs: pd.DataFrame,
    genes: Sequence[str],
    row_stats: RowStats,
) -> dict[str, Any]:
    """Pass 2 of the shard build from the spills, then seal (with the cells' ``row_stats``) and commit; returns what was added."""
    genes = pd.Index(genes, dtype=object)
    common = _shard_contents(genes, key, record, obs, name)
    nnz = build_shard_from_spills(staged / "shard", spills, n_obs=len(obs), **common)
    manifest = finish_staged(
        root,
        staged,
        name=name,
        layer=key,
        n_obs=len(obs),
        nnz=nnz,
        obs_columns=obs.columns,
        provenance=record,
        source="attribute",
        row_stats=row_stats,
    )
    entry = next(s for s in manifest["shards"] if s["name"] == name)
    return {"name": name, "n_obs": int(entry["n_obs"]), "nnz": int(entry["nnz"])}


def attribute_dataset(
    root: str,
    source: Any,
    name: str,
    model: Any,
    options: Mapping[str, Any],
    *,
    genes: Sequence[str],
    gene_order_hash: str,
    obs_columns: Sequence[str] | None = None,
    on_cells: Callable[[int], None] | None = None,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Attribute one dataset batch by batch straight into a new shard of the atlas at ``root``.

    ``source`` is an AnnData (in memory, backed or dask-backed) or the path of an .h5ad file (read
    backed); ``options`` are :func:`scsig.tl.attribute`'s (``store``, ``copy`` and ``mod`` excluded).
    Memory holds one batch of the attribution plus one row block of the shard build (about
    :data:`~scsig.atlas._store.BLOCK_NNZ` values), whatever the number of cells. Returns what was
    added: ``{"name", "n_obs", "nnz"}``.
    """
    from ..pp._validate import warn_empty_cells
    from ..tl._attribute import _provenance

    with pinned_threads(n_jobs), opened(source) as adata:
        run, obs, _ = _prepare(
            source, adata, name, model, options, genes=genes, gene_order_hash=gene_order_hash, obs_columns=obs_columns
        )
        with staging(Path(root)) as staged:
            spill, row_stats = _spill_cells(run, (0, len(obs)), staged / "scratch" / "part-00000", name, on_cells)
            record = _provenance(run)
            added = _merge_and_commit(
                Path(root),
                staged,
                [spill],
                name=name,
                key=run.key,
                record=record,
                obs=_with_dropped(obs, run.key, run.dropped),
                genes=genes,
                row_stats=row_stats,
            )
    warn_empty_cells(run.totals, obs.index, what=f"in the model's genes of dataset {name!r}")
    return added


def _with_dropped(obs: pd.DataFrame, key: str, dropped: np.ndarray | None) -> pd.DataFrame:
    """The shard's ``obs`` with a token model's genes dropped per cell (the column ``sg.tl.attribute`` writes)."""
    if dropped is None:
        return obs
    from ..tl._attribute import dropped_key

    # as sg.tl.attribute does, the column of this run replaces one of the same name (e.g. from an earlier run)
    return obs.assign(**{dropped_key(key): np.asarray(dropped, dtype=np.int64)})


# ---------------------------------------------------------------------- one dataset in blocks of cells, on a cluster


def block_bounds(n_obs: int, n_blocks: int, batch_size: int) -> np.ndarray:
    """Cell boundaries of ``n_blocks`` blocks of whole batches, as equal as batches allow.

    Each block starts at a multiple of ``batch_size``, so blocks hold the very batches of a run
    over all cells and their values are those of one run (a block is empty when there are fewer
    batches than blocks).
    """
    n_batches = -(-n_obs // batch_size)
    first = np.arange(n_blocks + 1, dtype=np.int64) * n_batches // max(n_blocks, 1)
    return np.minimum(first * batch_size, n_obs)


def attribute_block(
    root: str,
    staged: str,
    source: Any,
    name: str,
    model: Any,
    options: Mapping[str, Any],
    *,
    block: int,
    n_blocks: int,
    genes: Sequence[str],
    gene_order_hash: str,
    obs_columns: Sequence[str] | None = None,
    on_cells: Callable[[int], None] | None = None,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Attribute block ``block`` of ``n_blocks`` of a dataset's cells into a spill in the staging folder ``staged``.

    What :func:`merge_blocks` needs back: the spill (its folder and per-block gene offsets), the
    block's completeness gaps and per-cell row stats (:class:`RowStats`: two numbers per cell),
    the run's record and layer name. ``root`` is the atlas (unused here,
    kept for the same call shape as :func:`attribute_dataset`).
    """
    from ..pp._validate import warn_empty_cells
    from ..tl._attribute import _provenance

    del root
    with pinned_threads(n_jobs), opened(source) as adata:
        run, obs, (lo, hi) = _prepare(
            source,
            adata,
            name,
            model,
            options,
            genes=genes,
            gene_order_hash=gene_order_hash,
            obs_columns=obs_columns,
            block=(block, n_blocks),
        )
        spill, row_stats = _spill_cells(run, (lo, hi), Path(staged) / "scratch" / f"part-{block:05d}", name, on_cells)
    warn_empty_cells(run.totals[lo:hi], obs.index[lo:hi], what=f"in the model's genes of dataset {name!r}")
    record = _provenance(run)
    record.pop("completeness_gap", None)  # of the whole dataset: made from all blocks' gaps
    return {
        "spill": spill,
        "gaps": run.gaps[lo:hi].copy(),
        "dropped": None if run.dropped is None else run.dropped[lo:hi].copy(),
        "row_stats": row_stats,
        "record": record,
        "key": run.key,
        "rows": (lo, hi),
    }


def merge_blocks(
    root: str,
    staged: str,
    source: Any,
    name: str,
    parts: Sequence[Mapping[str, Any]],
    *,
    genes: Sequence[str],
    obs_columns: Sequence[str] | None = None,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Merge the spills of all blocks of a dataset (from :func:`attribute_block`) into its shard, and commit it.

    The blocks' per-cell row stats, joined in cell order, are stored with the shard before it is sealed.
    """
    from ..tl._attribute import dropped_summary
    from ..tl._completeness import _gap_summary

    parts = sorted(parts, key=lambda p: p["rows"][0])
    first = parts[0]
    record = dict(first["record"])
    dropped = None if first.get("dropped") is None else np.concatenate([p["dropped"] for p in parts])
    if dropped is not None:  # of the whole dataset: each block's record counts only its own cells
        record["genes_dropped"] = dropped_summary(dropped, first["key"], record["genes_dropped"].get("kept"))
    if record.get("method") == "ig":
        gaps = np.concatenate([p["gaps"] for p in parts])
        completeness = {"completeness_gap": _gap_summary(gaps)}
        auto = ("n_steps_auto", "auto_median_gaps", "auto_fraction_above_1pct")
        record = {**{k: v for k, v in record.items() if k not in auto}, **completeness}
        record |= {k: first["record"][k] for k in auto if k in first["record"]}
    with pinned_threads(n_jobs):
        with opened(source) as adata:
            obs = _with_dropped(shard_obs_frame(adata.obs, obs_columns, name), first["key"], dropped)
        return _merge_and_commit(
            Path(root),
            Path(staged),
            [p["spill"] for p in parts],
            name=name,
            key=first["key"],
            record=record,
            obs=obs,
            genes=genes,
            row_stats=RowStats.combine([p["row_stats"] for p in parts]),
        )
