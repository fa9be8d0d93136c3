"""``sg.datasets.pbmc68k_reduced``: scanpy's 700 labelled PBMCs of the 10x 68k study, as counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["pbmc68k_reduced"]

_OBS = ["bulk_labels", "n_counts", "n_genes", "percent_mito", "phase", "louvain"]


def pbmc68k_reduced() -> AnnData:
    """700 PBMCs of 10x Genomics' "Fresh 68k PBMCs (Donor A)" with cell-type labels; counts of 765 genes.

    The cells of :func:`scanpy.datasets.pbmc68k_reduced`, a file shipped inside scanpy (so this
    works offline), from the 68k-PBMC study of Zheng et al. (*Massively parallel digital
    transcriptional profiling of single cells*, Nat Commun 8:14049, 2017). scanpy's file holds no
    counts: ``X`` is scaled and ``.raw`` is log1p of counts per 10,000, computed on all genes. The
    counts are recovered exactly from ``.raw`` and the cell's total (``obs["n_counts"]``):
    ``expm1(raw) * n_counts / 10,000`` lies within 0.1 % (counts above 50) or 0.05 (smaller
    counts) of an integer for every non-zero entry, the rounding of the file's float32 values,
    which this function checks before rounding.

    Its labels (``obs["bulk_labels"]``: 10 types, among them CD14+ monocytes, CD19+ B cells,
    CD56+ NK cells and two CD8+ T-cell populations) are the study's: cells named after the purified
    (FACS-sorted) populations they resemble. That makes it the one dataset here with labels from
    sorted populations rather than from clustering, and its depth spread (2,141-9,497 counts)
    is that of the 10x v1 chemistry of :func:`pbmc3k`.

    Only 765 genes (the highly variable genes scanpy kept) are present. A model attributes its
    cells over those genes only, and scores, normalization and the cells' detected genes all
    refer to that gene space; ``obs["n_counts"]`` keeps every cell's total over all genes, which is
    the depth to relate scores to.

    Returns
    -------
    A new AnnData on every call (700 cells x 765 genes) with

    ``X``
        Raw UMI counts of the 765 genes, CSR ``int32``.
    ``obs["bulk_labels"]``
        Categorical cell type, 10 levels.
    ``obs["n_counts"]``, ``obs["n_genes"]``
        Total counts and detected genes per cell over all genes (from scanpy's file).
    ``obs["percent_mito"]``, ``obs["phase"]``, ``obs["louvain"]``
        As in scanpy's file.
    ``obsm["X_umap"]``
        scanpy's UMAP coordinates.

    Examples
    --------
    >>> import scsig as sg
    >>> adata = sg.datasets.pbmc68k_reduced()
    >>> adata.shape
    (700, 765)
    >>> int(adata.obs["bulk_labels"].value_counts()["CD19+ B"])
    95
    """
    import anndata as ad
    import scanpy as sc

    source = sc.datasets.pbmc68k_reduced()
    logged = sparse.csr_matrix(source.raw.X, dtype=np.float64)
    totals = source.obs["n_counts"].to_numpy(dtype=np.float64)
    counts = sparse.diags(totals / 1e4) @ logged.expm1()
    counts = sparse.csr_matrix(counts)
    off = np.abs(counts.data - np.rint(counts.data)) / np.maximum(np.rint(counts.data), 50.0)
    if off.size and off.max() > 1e-3:
        worst = int(np.argmax(off))
        msg = (
            "scanpy's pbmc68k_reduced file does not hold log1p(counts per 10,000) in .raw "
            f"(an entry inverts to {counts.data[worst]:.3f}, not an integer); "
            "this scanpy version ships a different file"
        )
        raise ValueError(msg)
    counts.data = np.rint(counts.data)
    counts.eliminate_zeros()
    obs = source.obs[[c for c in _OBS if c in source.obs.columns]].copy()  # labels are categorical in the file
    adata = ad.AnnData(
        X=counts.astype(np.int32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(source.raw.var_names, dtype=str)),
    )
    adata.obsm["X_umap"] = np.asarray(source.obsm["X_umap"])
    return adata
