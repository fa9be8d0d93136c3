"""The training data of :func:`scsig.models.train_encoder`: the gene order, aligned counts and label ids."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._utils import get_matrix, resolve_adata, to_memory
from .._utils._validate import check_counts as _check_counts
from .._utils._validate import check_unique

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

__all__ = ["select_genes", "training_inputs"]


def select_genes(
    adata: AnnData,
    *,
    layer: str | None = None,
    min_cells: int = 3,
    n_top_genes: int | None = 2000,
    gene_symbols: str | None = None,
) -> list[str]:
    """The default gene order of :func:`train_encoder`: detected genes, optionally the most variable.

    Genes detected (count > 0) in at least ``min_cells`` cells are kept. With ``n_top_genes``, the
    ``n_top_genes`` most variable of those are chosen by :func:`scanpy.pp.highly_variable_genes`
    (``flavor="seurat"``, on counts scaled to 10,000 per cell and log1p-transformed). The genes
    are returned in the data's order.

    Parameters
    ----------
    adata
        Raw counts.
    layer
        Layer holding the counts; ``None`` reads ``X``.
    min_cells
        Fewest cells a gene must be detected in.
    n_top_genes
        Number of highly variable genes to keep; ``None`` keeps every detected gene.
    gene_symbols
        Column of ``adata.var`` with the names to return; ``None`` returns ``var_names``.

    Returns
    -------
    The gene names.
    """
    counts = to_memory(get_matrix(adata, layer))
    names = pd.Index(adata.var_names if gene_symbols is None else adata.var[gene_symbols]).astype(str)
    detected = np.asarray((counts > 0).sum(axis=0)).ravel() >= min_cells
    if n_top_genes is None or n_top_genes >= int(detected.sum()):
        return names[detected].tolist()
    import anndata as ad
    import scanpy as sc

    sub = sparse.csr_matrix(counts, dtype=np.float32)[:, np.flatnonzero(detected)]
    tmp = ad.AnnData(X=sub)
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, n_top_genes=int(n_top_genes), flavor="seurat")
    keep = np.flatnonzero(detected)[tmp.var["highly_variable"].to_numpy()]
    return names[np.sort(keep)].tolist()


def _aligned_counts(
    adata: AnnData, counts: Any, gene_order: Sequence[str], gene_symbols: str | None
) -> tuple[sparse.csr_matrix, int]:
    """Counts in ``gene_order`` (CSR float32; genes the data lacks are zero columns) and the overlap."""
    names = pd.Index(adata.var_names if gene_symbols is None else adata.var[gene_symbols]).astype(str)
    check_unique(
        names,
        what="adata.var_names" if gene_symbols is None else f"adata.var[{gene_symbols!r}]",
        fix="Make them unique (e.g. `adata.var_names_make_unique()`) before training.",
    )
    check_unique(list(gene_order), what="gene_order", fix="Each gene may appear once.")
    pos = names.get_indexer(list(gene_order))
    found = np.flatnonzero(pos >= 0)
    proj = sparse.csr_matrix(
        (np.ones(found.size, dtype=np.float32), (pos[found], found)), shape=(len(names), len(gene_order))
    )
    out = sparse.csr_matrix(sparse.csr_matrix(counts, dtype=np.float32) @ proj)
    out.sort_indices()
    return out, int(found.size)


def _label_ids(adata: AnnData, labels: str | None) -> tuple[np.ndarray, dict[int, str] | None]:
    """Integer id per cell for the contrastive positives, and the label map (``None`` without labels).

    Without labels every cell is its own class. Cells whose label is missing get ids of their own
    (after the label codes), so they only pair with their other view.
    """
    n = adata.n_obs
    if labels is None:
        return np.arange(n), None
    if labels not in adata.obs.columns:
        msg = f"labels={labels!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
        raise KeyError(msg)
    cat = pd.Categorical(adata.obs[labels])
    codes = np.asarray(cat.codes, dtype=np.int64)
    if len(cat.categories) < 2:
        msg = f"adata.obs[{labels!r}] has {len(cat.categories)} distinct label(s); metric learning needs at least 2."
        raise ValueError(msg)
    missing = codes < 0
    codes[missing] = len(cat.categories) + np.arange(int(missing.sum()))
    return codes, {i: str(c) for i, c in enumerate(cat.categories)}


def training_inputs(
    adata: Any,
    *,
    labels: str | None,
    layer: str | None,
    gene_order: Sequence[str] | None,
    n_top_genes: int | None,
    min_cells: int,
    gene_symbols: str | None,
    check_counts: bool,
    mod: str,
) -> tuple[sparse.csr_matrix, list[str], int, np.ndarray, dict[int, str] | None]:
    """Check and read the training data of :func:`train_encoder`.

    Returns the counts aligned to the gene order, the gene order, how many of its genes the data
    has, the label index of each cell and the label map.
    """
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    if gene_symbols is not None and gene_symbols not in data.var.columns:
        msg = f"gene_symbols={gene_symbols!r} is not a column of adata.var (columns: {list(data.var.columns)})."
        raise KeyError(msg)
    counts = to_memory(get_matrix(data, layer))  # training reads every cell
    if check_counts:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        _check_counts(counts, where=where)
    if data.n_obs < 2:
        msg = f"Training needs at least 2 cells, got {data.n_obs}."
        raise ValueError(msg)
    if gene_order is None:
        gene_order = select_genes(
            data, layer=layer, min_cells=min_cells, n_top_genes=n_top_genes, gene_symbols=gene_symbols
        )
    gene_order = [str(g) for g in gene_order]
    x, overlap = _aligned_counts(data, counts, gene_order, gene_symbols)
    if overlap == 0:
        msg = f"None of the {len(gene_order)} genes of gene_order is in the data (first: {gene_order[:3]})."
        raise ValueError(msg)
    ids, label_map = _label_ids(data, labels)
    return x, gene_order, overlap, ids, label_map
