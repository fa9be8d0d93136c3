"""``sg.datasets.kang_ifnb``: the bundled Kang et al. 2018 IFN-beta PBMC subset."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._bundled import BUNDLED_SHA256, read_bundled

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["KANG_IFNB_SHA256", "kang_ifnb"]

KANG_IFNB_FILE = "kang_ifnb1k.h5ad"
KANG_IFNB_SHA256 = BUNDLED_SHA256[KANG_IFNB_FILE]
"""SHA-256 of the bundled ``kang_ifnb1k.h5ad``."""


def kang_ifnb() -> AnnData:
    """832 PBMCs from Kang et al. (2018), control or stimulated with interferon-beta; raw counts.

    A random subset of the 10x Genomics PBMCs of Kang HM et al., *Multiplexed droplet single-cell
    RNA-sequencing using natural genetic variation*, Nat Biotechnol 36:89-94 (2018),
    doi:10.1038/nbt.4042; the data are on GEO as GSE96583 (batch 2: PBMCs of 8 lupus patients,
    cultured 6 h with or without recombinant IFN-beta). The cells come from the SeuratData ``ifnb``
    object (13,999 cells x 14,053 genes), via the 832-cell subset ``ifnb1k`` shipped by the GitHub
    repository ``hjames1/seuratTools`` (MIT licence; file ``data/ifnb1k.rda``). Only its raw
    ``counts`` were kept. The file ships inside the package (2.2 MB), so this works offline.

    Stimulated cells express a strong interferon response (ISG15, IFI6, IFIT1/2/3, MX1, ...) in
    every cell type, which makes this the standard small example for an interferon signature.
    There are no donor labels (the SeuratData object does not carry the demuxlet assignments), so
    sample-level statistics are not possible with it; :func:`scsig.datasets.kang_ifnb_full`
    downloads all batch-2 cells with their donors from GEO.

    Returns
    -------
    A new AnnData on every call (832 cells x 14,053 genes) with

    ``X``
        Raw UMI counts, CSR ``int32``.
    ``obs["stim"]``
        Categorical, ``"CTRL"`` (391 cells) or ``"STIM"`` (441 cells).
    ``obs["seurat_annotations"]``
        Categorical cell type, 6 levels: CD14 Mono, CD4 Naive T, CD4 Memory T, CD16 Mono, B, CD8 T.
    ``obs["orig.ident"]``
        Categorical, ``"IMMUNE_CTRL"`` / ``"IMMUNE_STIM"``.
    ``obs["nCount_RNA"]``, ``obs["nFeature_RNA"]``, ``obs["n_counts"]``, ``obs["n_genes"]``
        Total counts and detected genes per cell.
    ``var["gene_symbol"]``
        Gene symbols (also the ``var_names``).

    Examples
    --------
    >>> import scsig as sg
    >>> adata = sg.datasets.kang_ifnb()
    >>> adata.shape
    (832, 14053)
    >>> adata.obs["stim"].value_counts().sort_index().tolist()
    [391, 441]
    """
    return read_bundled(KANG_IFNB_FILE)
