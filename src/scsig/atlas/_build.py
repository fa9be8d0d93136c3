"""Building one dataset's shard in a staging folder: its contents, the builds from a layer, the seal and commit.

Every write path ends here: a build writes ``tmp/<id>/shard`` (see :mod:`scsig.atlas._staging`),
:func:`seal` is the one point where the shard is complete and not yet visible (steps that need the
finished files, e.g. checksums, go there; what it returns is added to the manifest entry), and
:func:`finish_staged` commits it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import IN_MODEL_SUFFIX, UNS_KEY
from . import _manifest as mf
from ._query import DATASET_KEY
from ._staging import commit, now, remove_tree, staging
from ._store import BLOCK_NNZ, build_shard_from_csr, build_shard_from_rows, release_memory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from pathlib import Path

    from anndata import AnnData

    from ._rowstats import RowStats

__all__ = [
    "build_from_layer",
    "finish_staged",
    "reorder",
    "seal",
    "shard_obs_frame",
    "shard_var",
    "var_lookup",
    "write_dataset",
]


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
    mf.check_layer_name(layer)
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
    mf.check_layer_name(layer)  # it becomes a folder of the shard
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
