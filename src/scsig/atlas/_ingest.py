"""Writing datasets into an atlas: staging, the commit, and the builds that feed them.

Every dataset goes the same way, whoever writes it (``add``, ``attribute``, a TileDB import, a
worker of a dask cluster):

1. :func:`staging` makes a private folder ``tmp/<id>/`` holding a build lock (an OS file lock,
   released by the OS when the writer dies), so several writers can build at once and a cleaner can
   tell a live build from a dead one's leftovers.
2. A build writes the shard into ``tmp/<id>/shard`` (scratch files go to ``tmp/<id>/scratch``).
3. :func:`seal` is the one point where a shard is complete and not yet visible: steps that need the
   finished files (e.g. checksums) go there; what it returns is added to the shard's manifest entry.
4. :func:`commit`, under the atlas's writer lock, checks the name is still free, renames the shard
   into ``shards/`` and replaces the manifest: a dataset becomes visible all at once, or not at all.

:func:`attribute_dataset` is the streaming path: it attributes a (backed or dask-backed) AnnData
batch by batch and feeds the batches straight into a shard build, so memory does not grow with the
number of cells. It is a plain function of picklable arguments, run in-process or as a dask task.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import IN_MODEL_SUFFIX, UNS_KEY
from . import _manifest as mf
from ._query import DATASET_KEY
from ._rowstats import RowStats
from ._store import (
    BLOCK_NNZ,
    Spill,
    build_shard_from_csr,
    build_shard_from_rows,
    build_shard_from_spills,
    release_memory,
    remove_tree,
    spill_rows,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from anndata import AnnData

__all__ = [
    "attribute_dataset",
    "build_from_layer",
    "commit",
    "seal",
    "shard_obs_frame",
    "shard_var",
    "staging",
    "var_lookup",
    "write_dataset",
]

BUILD_LOCK = ".building"
"""File in a staging folder that its writer holds an OS lock on while it builds."""

STALE_SECONDS = 3600
"""A hidden (still being set up) staging folder older than this is a dead writer's leftover."""


def now() -> str:
    """The current UTC time, as recorded in the manifest."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- staging and commit


def _try_lock(fh: Any) -> Callable[[], None] | None:
    """Take an exclusive OS lock on ``fh`` without waiting; the release function, or None if held elsewhere."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        fh.seek(0)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return None

        def unlock() -> None:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

        return unlock
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None
    return lambda: fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A private, locked build folder ``tmp/<id>/``; removed on exit (its shard, once committed, has moved)."""
    tmp_root = root / mf.TMP
    tmp_root.mkdir(exist_ok=True)
    uid = uuid.uuid4().hex
    hidden = tmp_root / f".{uid}"
    hidden.mkdir()
    fh = (hidden / BUILD_LOCK).open("a+b")
    release = _try_lock(fh)
    folder = tmp_root / uid
    try:
        hidden.rename(folder)  # appears under its final name with the lock already held
        yield folder
    finally:
        remove_tree(folder)
        remove_tree(hidden)
        if release is not None:
            release()
        fh.close()


def _is_live_build(folder: Path) -> bool:
    if folder.name.startswith("."):
        return time.time() - folder.stat().st_mtime < STALE_SECONDS
    lock = folder / BUILD_LOCK
    if not lock.is_file():
        return False
    with lock.open("a+b") as fh:
        release = _try_lock(fh)
        if release is None:
            return True
        release()
    return False


def clean_leftovers(root: Path, manifest: Mapping) -> None:
    """Remove what dead writers left: unlisted shard folders and staging folders nobody builds in.

    Call with the writer lock held (no shard is renamed into ``shards/`` without it).
    """
    listed = {s["dir"] for s in manifest["shards"]}
    (root / mf.TMP).mkdir(exist_ok=True)
    (root / mf.SHARDS).mkdir(exist_ok=True)
    for child in (root / mf.TMP).iterdir():
        with contextlib.suppress(FileNotFoundError):  # a live writer may finish meanwhile
            if not _is_live_build(child):
                remove_tree(child)
    for child in (root / mf.SHARDS).iterdir():
        if child.name not in listed:
            remove_tree(child)


def seal(shard: Path, *, layer: str, n_obs: int, row_stats: RowStats | None = None) -> dict[str, Any]:
    """The shard at ``shard`` is complete and about to be committed: fields to add to its manifest entry.

    This is the one point of every write path where the finished files exist and nobody can see
    them yet; it runs in the writing process, outside the atlas's writer lock. It stores each
    cell's attribution total and top-``k`` sum (for ``Atlas.score(mode="top")``; collected by the
    build in ``row_stats``, else computed from the shard), then checksums every file, those included.
    """
    from ..tl._score_modes import DEFAULT_TOP_K
    from ._integrity import seal_shard
    from ._rowstats import write_row_stats

    top_k = row_stats.top_k if row_stats is not None else DEFAULT_TOP_K
    computed = row_stats.result(n_obs) if row_stats is not None else None
    record = write_row_stats(shard, layer=layer, n_obs=n_obs, top_k=top_k, computed=computed)
    return {"row_stats": record, "checksums": seal_shard(shard)}


def commit(root: Path, staged: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Make the shard built in ``staged/shard`` visible under ``entry``; returns the new manifest."""
    with mf.writer_lock(root):
        manifest = mf.read_manifest(root)
        if entry["name"] in [s["name"] for s in manifest["shards"]]:
            msg = f"The atlas already has a dataset named {entry['name']!r}; choose another name."
            raise ValueError(msg)
        clean_leftovers(root, manifest)
        (staged / "shard").rename(root / mf.SHARDS / entry["dir"])
        manifest = dict(manifest)
        manifest["shards"] = [*manifest["shards"], entry]
        mf.write_manifest(root, manifest)
    return manifest


def reorder(root: Path, names: Sequence[str]) -> None:
    """List the datasets ``names`` in this order, in the places they already hold in the manifest.

    Datasets committed as they finish (on a cluster) are listed in the order they finished; this
    puts them in the order they were given, so an atlas's order does not depend on timing.
    """
    rank = {n: k for k, n in enumerate(names)}
    with mf.writer_lock(root):
        manifest = mf.read_manifest(root)
        shards = list(manifest["shards"])
        where = [k for k, s in enumerate(shards) if s["name"] in rank]
        ordered = sorted((shards[k] for k in where), key=lambda s: rank[s["name"]])
        if [shards[k]["name"] for k in where] == [s["name"] for s in ordered]:
            return
        for k, entry in zip(where, ordered, strict=True):
            shards[k] = entry
        mf.write_manifest(root, dict(manifest, shards=shards))


def write_dataset(
    root: Path,
    *,
    name: str,
    layer: str,
    n_obs: int,
    obs_columns: Sequence[str],
    provenance: Mapping | None,
    build: Callable[[Path, Path], int],
    source: str,
    row_stats: RowStats | None = None,
) -> dict[str, Any]:
    """Stage, build, seal and commit one dataset; returns the new manifest.

    ``build(shard, scratch)`` writes the shard folder and returns its number of stored values; a
    build that sees whole cells feeds them to ``row_stats``.
    """
    with staging(root) as staged:
        nnz = build(staged / "shard", staged / "scratch")
        return finish_staged(
            root,
            staged,
            name=name,
            layer=layer,
            n_obs=n_obs,
            nnz=nnz,
            obs_columns=obs_columns,
            provenance=provenance,
            source=source,
            row_stats=row_stats,
        )


def finish_staged(
    root: Path,
    staged: Path,
    *,
    name: str,
    layer: str,
    n_obs: int,
    nnz: int,
    obs_columns: Sequence[str],
    provenance: Mapping | None,
    source: str,
    row_stats: RowStats | None = None,
) -> dict[str, Any]:
    """Seal and commit the shard built in ``staged/shard`` (its scratch files removed); returns the new manifest.

    ``row_stats`` are the per-cell sums the build collected (else :func:`seal` computes them from the shard).
    """
    remove_tree(staged / "scratch")
    extra = seal(staged / "shard", layer=layer, n_obs=n_obs, row_stats=row_stats)
    entry = {
        "name": name,
        "dir": staged.name,
        "n_obs": int(n_obs),
        "nnz": int(nnz),
        "layer": layer,
        "obs_columns": [str(c) for c in obs_columns],
        "provenance": mf.jsonable(dict(provenance)) if provenance is not None else None,
        "source": source,
        "added": now(),
        **extra,
    }
    return commit(root, staged, entry)


# ---------------------------------------------------------------------- what a shard holds


def shard_obs_frame(obs: pd.DataFrame, obs_columns: Sequence[str] | None, name: str) -> pd.DataFrame:
    """The cell metadata a shard stores: the chosen columns, string cell names, ``dataset`` refused."""
    if obs_columns is not None:
        cols = [str(c) for c in obs_columns]
        missing = [c for c in cols if c not in obs.columns]
        if missing:
            msg = f"obs_columns {missing} are not in adata.obs (it has {list(obs.columns)[:10]})."
            raise KeyError(msg)
        obs = obs[cols]
    if DATASET_KEY in obs.columns:
        msg = (
            f"Dataset {name!r}: obs column {DATASET_KEY!r} is reserved for the dataset's name in query results; "
            "rename it, or leave it out with obs_columns=."
        )
        raise ValueError(msg)
    obs = obs.copy()
    obs.index = pd.Index(obs.index.astype(str), name=obs.index.name)
    return obs


def shard_var(genes: pd.Index, layer: str) -> pd.DataFrame:
    """A shard's ``var``: the atlas genes, all in the model."""
    return pd.DataFrame(
        {f"{layer}{IN_MODEL_SUFFIX}": np.ones(len(genes), dtype=bool)}, index=pd.Index(genes, dtype=object, name=None)
    )


def _recorded_hash(prov: Mapping) -> Any:
    return prov.get("gene_order_hash") or (prov.get("model") or {}).get("gene_order_hash")


def _check_model(prov: Mapping, genes: pd.Index, gene_order_hash: str, layer: str | None, name: str) -> None:
    recorded = _recorded_hash(prov)
    if recorded == gene_order_hash:
        return
    model = prov.get("model") or {}
    msg = (
        f"Dataset {name!r}: layer {layer!r} was attributed with model {model.get('name', 'unknown')!r} "
        f"(source {model.get('source', 'unknown')!r}, {model.get('n_genes', '?')} genes, gene order hash "
        f"{str(recorded)[:12]}), but this atlas expects gene order hash {gene_order_hash[:12]} "
        f"({len(genes)} genes). An atlas holds one model's attributions: build one atlas per model, or "
        "attribute this dataset with the atlas's model."
    )
    raise ValueError(msg)


def _lookup_with_provenance(adata: AnnData, genes: pd.Index, layer: str | None, prov: Mapping, name: str) -> np.ndarray:
    """Columns -> atlas genes through the names the model used; columns outside the model give -1."""
    symbols = prov.get("gene_symbols", "var_names")
    names = (
        adata.var[symbols].astype(str)
        if symbols not in (None, "var_names") and symbols in adata.var
        else adata.var_names
    )
    pos = genes.get_indexer(pd.Index(names, dtype=object))
    in_model_col = f"{layer}{IN_MODEL_SUFFIX}"
    if in_model_col not in adata.var:
        return pos
    in_model = adata.var[in_model_col].to_numpy(bool)
    lost = np.flatnonzero(in_model & (pos < 0))
    if lost.size:
        msg = f"Dataset {name!r}: {lost.size} genes marked as in the model are not in the atlas gene order (e.g. {list(adata.var_names[lost[:5]])})."
        raise ValueError(msg)
    return np.where(in_model, pos, -1)


def _lookup_without_provenance(adata: AnnData, genes: pd.Index, layer: str | None, name: str) -> np.ndarray:
    """Columns -> atlas genes by var name; every column must be an atlas gene."""
    pos = genes.get_indexer(pd.Index(adata.var_names, dtype=object))
    outside = np.flatnonzero(pos < 0)
    if outside.size:
        where = f"layer {layer!r}" if layer is not None else "adata.X"
        msg = (
            f"Dataset {name!r}: {where} has no scsig provenance (adata.uns['scsig']['layers'][{layer!r}]), so its "
            f"columns must all be genes of the atlas gene order, but {outside.size} of {adata.n_vars} var names "
            f"are not (e.g. {list(adata.var_names[outside[:5]])}). Attribute the data with sg.tl.attribute, "
            "or subset it to the atlas's genes."
        )
        raise ValueError(msg)
    return pos


def var_lookup(
    adata: AnnData, layer: str | None, prov: Mapping | None, name: str, *, genes: pd.Index, gene_order_hash: str
) -> np.ndarray:
    """For each column of the layer, its position in the atlas gene order, or -1 (not stored)."""
    if prov is not None:
        _check_model(prov, genes, gene_order_hash, layer, name)
        pos = _lookup_with_provenance(adata, genes, layer, prov, name)
    else:
        pos = _lookup_without_provenance(adata, genes, layer, name)
    mapped = pos[pos >= 0]
    if np.unique(mapped).size != mapped.size:
        dup_pos = pd.Index(mapped)[pd.Index(mapped).duplicated()].unique()[:5]
        msg = f"Dataset {name!r}: several columns map to the same atlas genes ({list(genes[dup_pos])}); make the gene names unique."
        raise ValueError(msg)
    return pos.astype(np.int64)


# ---------------------------------------------------------------------- builds


def row_blocks(x: Any) -> Iterator[Any]:
    """Row blocks of a row-sliceable matrix, about :data:`BLOCK_NNZ` values each (views of a CSR)."""
    n = x.shape[0]
    if sparse.issparse(x) and x.format == "csr":
        bounds = np.searchsorted(x.indptr, np.arange(0, x.nnz + BLOCK_NNZ, BLOCK_NNZ), side="left")
        bounds = np.unique(np.clip(np.append(bounds, n), 0, n))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            a, b = x.indptr[lo], x.indptr[hi]
            yield (x.indptr[lo : hi + 1] - a, x.indices[a:b], x.data[a:b])  # views: no copy of the block
        return
    lo, rows = 0, 1024
    while lo < n:
        hi = min(n, lo + rows)
        blk = x[lo:hi]
        yield blk
        nnz = blk.nnz if sparse.issparse(blk) else np.count_nonzero(blk)
        rows = int(min(max(BLOCK_NNZ / max(nnz / (hi - lo), 1.0), 64), 1 << 20))
        lo = hi


def _shard_contents(genes: pd.Index, layer: str, provenance: Mapping, obs: pd.DataFrame, name: str) -> dict[str, Any]:
    uns = {UNS_KEY: {"layers": {layer: dict(provenance)}, "atlas": {"name": name}}}
    return {"n_genes": len(genes), "obs": obs, "var": shard_var(genes, layer), "uns": uns, "layer": layer, "name": name}


def build_from_layer(
    path: Path,
    scratch: Path,
    x: Any,
    lut: np.ndarray,
    *,
    obs: pd.DataFrame,
    genes: pd.Index,
    layer: str,
    provenance: Mapping,
    name: str,
    show: bool,
    row_stats: RowStats | None = None,
) -> int:
    """Write a shard from an attribution layer (in memory or backed); returns its number of values."""
    from .._utils._progress import tqdm

    common = _shard_contents(genes, layer, provenance, obs, name)
    with tqdm(total=len(genes), disable=not show, desc=f"add {name}", unit="genes") as bar:

        def on_range(g1: int, _n: int) -> None:
            bar.update(g1 - bar.n)

        if sparse.issparse(x) and x.format != "csr":
            x = sparse.csr_matrix(x)  # row blocks of CSC/COO are slow to cut: one conversion
        if sparse.issparse(x) and x.nnz <= BLOCK_NNZ:  # one gene range: gather straight from the CSR
            return build_shard_from_csr(path, sparse.csr_matrix(x), lut, on_range=on_range, on_rows=row_stats, **common)
        return build_shard_from_rows(
            path, row_blocks(x), lut, n_obs=len(obs), scratch=scratch, on_range=on_range, on_rows=row_stats, **common
        )


def _grouped(batches: Iterable[sparse.csr_matrix], budget: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Concatenate CSR batches into row blocks of about ``budget`` values, as ``(indptr, indices, data)``.

    Few, large blocks keep the shard build's per-block bookkeeping small (one row of gene counts
    per block), while a block's memory stays bounded by the budget.
    """
    parts: list[sparse.csr_matrix] = []
    held = 0
    for batch in batches:
        parts.append(batch)
        held += batch.nnz
        if held >= budget:
            block = sparse.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
            parts, held = [], 0
            release_memory()  # the batches' memory, freed by vstack's copy
            yield block.indptr, block.indices, block.data
            del block
    if parts:
        block = sparse.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
        yield block.indptr, block.indices, block.data


def _open_source(source: Any) -> AnnData:
    import anndata as ad

    if isinstance(source, ad.AnnData):
        return source
    path = Path(source)
    if not path.is_file():
        msg = f"{str(path)!r} is not a file; pass paths of .h5ad files or AnnData objects."
        raise FileNotFoundError(msg)
    return ad.read_h5ad(path, backed="r")


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
    name: str,
    model: Any,
    options: Mapping[str, Any],
    *,
    genes: Sequence[str],
    gene_order_hash: str,
    obs_columns: Sequence[str] | None,
) -> tuple[Any, pd.DataFrame]:
    """Open the source and set up its attribution run (checked against the atlas's model); ``(run, shard obs)``."""
    import inspect

    from ..tl._attribute import _set_up

    opts = attribute_defaults() | check_options(options)
    takes = inspect.signature(_set_up).parameters
    adata = _open_source(source)
    run = _set_up(adata, model, **{k: v for k, v in opts.items() if k in takes})
    if run.model.gene_order_hash != gene_order_hash:
        msg = (
            f"Dataset {name!r}: model {run.model.name!r} has gene order hash {run.model.gene_order_hash[:12]} "
            f"({run.model.n_genes} genes), but the atlas expects {gene_order_hash[:12]} ({len(genes)} genes). "
            "Attribute with the atlas's model, or build one atlas per model."
        )
        raise ValueError(msg)
    return run, shard_obs_frame(adata.obs, obs_columns, name)


def _spill_cells(run: Any, rows: tuple[int, int], folder: Path, name: str, on_cells: Any) -> tuple[Spill, RowStats]:
    """Attribute cells ``rows`` batch by batch into a gene-major spill (pass 1 of the shard build).

    Also returns those cells' attribution totals and top-``k`` sums, collected from the batches.
    """
    from ..tl._attribute import _batches
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

    with pinned_threads(n_jobs):
        run, obs = _prepare(
            source, name, model, options, genes=genes, gene_order_hash=gene_order_hash, obs_columns=obs_columns
        )
        with staging(Path(root)) as staged:
            spill, row_stats = _spill_cells(run, (0, len(obs)), staged / "scratch" / "part-00000", name, on_cells)
            added = _merge_and_commit(
                Path(root),
                staged,
                [spill],
                name=name,
                key=run.key,
                record=_provenance(run),
                obs=obs,
                genes=genes,
                row_stats=row_stats,
            )
    warn_empty_cells(run.totals, obs.index, what="in the model's genes")
    return added


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
    with pinned_threads(n_jobs):
        run, obs = _prepare(
            source, name, model, options, genes=genes, gene_order_hash=gene_order_hash, obs_columns=obs_columns
        )
        lo, hi = (int(v) for v in block_bounds(len(obs), n_blocks, run.batch_size)[block : block + 2])
        spill, row_stats = _spill_cells(run, (lo, hi), Path(staged) / "scratch" / f"part-{block:05d}", name, on_cells)
    warn_empty_cells(run.totals[lo:hi], obs.index[lo:hi], what="in the model's genes")
    record = _provenance(run)
    record.pop("completeness_gap", None)  # of the whole dataset: made from all blocks' gaps
    return {
        "spill": spill,
        "gaps": run.gaps[lo:hi].copy(),
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
    from ..tl._attribute import _gap_summary

    parts = sorted(parts, key=lambda p: p["rows"][0])
    first = parts[0]
    record = dict(first["record"])
    if record.get("method") == "ig":
        gaps = np.concatenate([p["gaps"] for p in parts])
        completeness = {"completeness_gap": _gap_summary(gaps)}
        record = {**{k: v for k, v in record.items() if k not in ("n_steps_auto", "auto_median_gaps")}, **completeness}
        record |= {k: first["record"][k] for k in ("n_steps_auto", "auto_median_gaps") if k in first["record"]}
    with pinned_threads(n_jobs):
        obs = shard_obs_frame(_open_source(source).obs, obs_columns, name)
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


# ---------------------------------------------------------------------- many datasets, in-process or on a cluster

_NOT_OPTIONS = {"adata", "model", "store", "copy", "mod", "progress", "completeness_key"}
"""Parameters of :func:`scsig.tl.attribute` that :meth:`scsig.Atlas.attribute` does not pass on."""


def attribute_defaults() -> dict[str, Any]:
    """:func:`scsig.tl.attribute`'s options and their defaults (those :meth:`scsig.Atlas.attribute` passes on)."""
    import inspect

    from ..tl._attribute import attribute

    params = inspect.signature(attribute).parameters.values()
    return {p.name: p.default for p in params if p.name not in _NOT_OPTIONS}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The attribution options, checked against :func:`scsig.tl.attribute`'s keywords."""
    from ..tl._attribute import _check_attribute_args

    allowed = list(attribute_defaults())
    unknown = [k for k in options if k not in allowed]
    if unknown:
        msg = f"Unknown attribution options {unknown}; Atlas.attribute passes on {allowed} (see sg.tl.attribute)."
        raise TypeError(msg)
    _check_attribute_args(
        options.get("method", "ig"),
        on_degenerate=options.get("on_degenerate", "raise"),
        n_steps=options.get("n_steps", 50),
        target_sum=options.get("target_sum", 1000.0),
        batch_size=options.get("batch_size"),
    )
    return dict(options)


def source_names(sources: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    """Dataset names: ``names``, or each file's stem; checked to be unique and non-empty."""
    from anndata import AnnData

    if names is None:
        out = []
        for k, src in enumerate(sources):
            if isinstance(src, AnnData):
                msg = f"sources[{k}] is an AnnData: pass names= (one dataset name per source)."
                raise ValueError(msg)
            out.append(Path(src).stem)
    else:
        out = [names] if isinstance(names, str) else [str(n) for n in names]
        if len(out) != len(sources):
            msg = f"names has {len(out)} entries but there are {len(sources)} sources; give one name per source."
            raise ValueError(msg)
    empty = [k for k, n in enumerate(out) if not n]
    if empty:
        msg = f"Dataset names must be non-empty strings (sources {empty})."
        raise ValueError(msg)
    dup = pd.Index(out)[pd.Index(out).duplicated()].unique().tolist()
    if dup:
        msg = f"Dataset names {dup} are given to more than one source; pass names= to tell them apart."
        raise ValueError(msg)
    return out


def n_cells(source: Any) -> int:
    """Cells of an AnnData or of an .h5ad file (read from the file's obs index, not the matrix)."""
    from anndata import AnnData

    if isinstance(source, AnnData):
        return int(source.n_obs)
    import h5py

    path = Path(source)
    if not path.is_file():
        msg = f"{str(path)!r} is not a file; pass paths of .h5ad files or AnnData objects."
        raise FileNotFoundError(msg)
    with h5py.File(path, "r") as fh:
        obs = fh["obs"]
        return int(obs[obs.attrs["_index"]].shape[0])


def for_worker(source: Any) -> Any:
    """What to send to a worker for ``source``: a backed AnnData's file path, else the source itself."""
    from anndata import AnnData

    if isinstance(source, AnnData) and source.isbacked:
        return str(source.filename)
    return str(source) if isinstance(source, Path) else source


def _worker_threads() -> int | None:
    from distributed import get_worker

    try:
        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError):  # pragma: no cover - not on a worker
        return None


def dask_task(
    root: str, source: Any, name: str, model: Any, options: Mapping[str, Any], queue: str | None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`attribute_dataset` on a dask worker: its threads, and cells done sent to ``queue``."""
    from distributed import Queue

    report = Queue(queue).put if queue is not None else None
    return attribute_dataset(root, source, name, model, options, on_cells=report, n_jobs=_worker_threads(), **kwargs)


def dask_block(
    root: str, source: Any, name: str, model: Any, options: Mapping[str, Any], queue: str | None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`attribute_block` on a dask worker: its threads, and cells done sent to ``queue``."""
    from distributed import Queue

    report = Queue(queue).put if queue is not None else None
    return attribute_block(root, source=source, name=name, model=model, options=options, on_cells=report,
                           n_jobs=_worker_threads(), **kwargs)  # fmt: skip


def dask_merge(root: str, staged: str, source: Any, name: str, parts: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
    """:func:`merge_blocks` on a dask worker, with its threads."""
    return merge_blocks(root, staged, source, name, parts, n_jobs=_worker_threads(), **kwargs)


MIN_TASK_CELLS = 2_000
"""Fewest cells per task when :meth:`scsig.Atlas.attribute` splits datasets into blocks on its own."""

TASKS_PER_THREAD = 4
"""Tasks per worker thread aimed at when splitting datasets on a cluster (so workers finish together)."""


BALANCE_TOLERANCE = 0.1
"""Whole datasets are one task each when the busiest thread gets at most this much more than an even share."""


def cells_per_task(total: int, n_threads: int) -> int:
    """Cells per task on a cluster of ``n_threads`` worker threads: about :data:`TASKS_PER_THREAD` tasks each."""
    return max(MIN_TASK_CELLS, -(-total // max(1, TASKS_PER_THREAD * n_threads)))


def default_per_task(sizes: Sequence[int], n_threads: int) -> int | None:
    """``None`` (one task per dataset) when whole datasets keep ``n_threads`` threads evenly busy, else :func:`cells_per_task`.

    Whole datasets are assigned largest first, each to the least loaded thread; if the busiest
    thread then gets more than :data:`BALANCE_TOLERANCE` above an even share of the cells, the
    datasets are split into blocks. Blocks cost an extra merge pass, so they are used only where
    they even out the work (few or unequal datasets).
    """
    threads = max(1, int(n_threads))
    loads = [0] * threads
    for size in sorted(sizes, reverse=True):
        loads[loads.index(min(loads))] += int(size)
    total = sum(loads)
    if max(loads) <= (1 + BALANCE_TOLERANCE) * total / threads:
        return None
    return cells_per_task(total, threads)


def n_blocks(n_obs: int, per_task: int | None) -> int:
    """Blocks a dataset of ``n_obs`` cells is split into for tasks of about ``per_task`` cells (``None``: one)."""
    if per_task is None or n_obs <= per_task:
        return 1
    return max(1, round(n_obs / per_task))


def run_local(jobs: list[dict[str, Any]], *, common: dict[str, Any], bar: Any) -> dict[str, Any]:
    """Run the jobs one after the other in this process; ``{name: result or exception}``."""
    results: dict[str, Any] = {}
    for job in jobs:
        job = {k: v for k, v in job.items() if k != "n_obs"}
        try:
            results[job["name"]] = attribute_dataset(**job, **common, on_cells=bar.update)
        except Exception as err:  # noqa: BLE001 - one dataset's failure is reported, the others go on
            results[job["name"]] = err
    return results


def run_on_client(
    client: Any,
    jobs: list[dict[str, Any]],
    *,
    common: dict[str, Any],
    bar: Any,
    per_task: int | None = None,
) -> dict[str, Any]:
    """Run the jobs on ``client``'s cluster; ``{name: result or exception}``.

    A dataset of more than ``per_task`` cells is split into blocks of cells: one task per block
    attributes its cells into a spill inside a staging folder that this process creates and holds
    locked, then one task merges the spills, seals the shard and commits it. Smaller datasets are
    one task each. ``per_task=None`` picks it from the datasets' sizes and the cluster's threads
    (:func:`default_per_task`).
    """
    from distributed import Queue

    queue_name = f"scsig-attribute-{uuid.uuid4().hex}"
    queue = Queue(queue_name, client=client)
    model = common["model"]
    # hash=False: a key of its own per call. With the default (a key from the data's hash), a second call with the
    # same model reuses the key, and the first call's future, released when it returns, can take the data away
    # from the second call's tasks ("lost dependencies").
    shared = dict(
        common, model=client.scatter(model, broadcast=True, hash=False) if not isinstance(model, str) else model
    )
    scattered: list[Any] = []  # sources sent once per dataset, held until every task that reads them is done
    if per_task is None:
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        per_task = default_per_task([j["n_obs"] for j in jobs], threads)
    futures: dict[Any, str] = {}
    held: dict[str, contextlib.ExitStack] = {}
    blocks_of: dict[str, list[Any]] = {}
    results: dict[str, Any] = {}
    try:
        for k, job in enumerate(jobs):
            job = dict(job)
            n_obs, name = job.pop("n_obs"), job["name"]
            key = f"{queue_name}-{k}"
            blocks = n_blocks(n_obs, per_task)
            if blocks == 1:
                fut = client.submit(dask_task, **job, **shared, queue=queue_name, pure=False, key=key)
                futures[fut] = name
                continue
            stack = contextlib.ExitStack()
            try:
                staged = str(stack.enter_context(staging(Path(job["root"]))))
            except Exception as err:  # noqa: BLE001 - reported per dataset
                stack.close()
                results[name] = err
                continue
            held[name] = stack
            source = job["source"]
            if not isinstance(source, str):  # an AnnData: sent to the workers once, not once per block
                source = client.scatter(source, hash=False)
                scattered.append(source)
            parts = [
                client.submit(
                    dask_block,
                    job["root"],
                    source=source,
                    name=name,
                    staged=staged,
                    block=b,
                    n_blocks=blocks,
                    **shared,
                    queue=queue_name,
                    pure=False,
                    key=f"{key}-block-{b}",
                )  # fmt: skip
                for b in range(blocks)
            ]
            blocks_of[name] = parts
            merge_kw = {"genes": shared["genes"], "obs_columns": shared["obs_columns"]}
            fut = client.submit(
                dask_merge, job["root"], staged, source, name, parts, **merge_kw, pure=False, key=f"{key}-merge"
            )
            futures[fut] = name
        pending = set(futures)

        def drain() -> None:
            while True:
                got = queue.get(batch=True)
                if not got:
                    return
                bar.update(int(sum(got)))

        while pending:
            time.sleep(0.2)
            drain()
            done = {f for f in pending if f.done()}
            pending -= done
            for fut in done:
                name = futures[fut]
                try:
                    results[name] = fut.result()
                except Exception as err:  # noqa: BLE001 - reported per dataset
                    results[name] = err
                if name in held:  # its shard has moved into the atlas, or it failed: the staging folder goes
                    client.cancel(blocks_of.pop(name))  # after a failed block, the others' work is of no use
                    held.pop(name).close()
        drain()
    finally:
        for stack in held.values():
            stack.close()
    return results
