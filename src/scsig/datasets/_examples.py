"""``sg.datasets.kang_muscat`` and ``sg.datasets.pbmc3k``: two more real datasets bundled with the package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._bundled import read_bundled

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["kang_muscat", "pbmc3k"]


def kang_muscat() -> AnnData:
    """1,556 PBMCs of 2 donors x 2 conditions from Kang et al. (2018), as subset by muscat; raw counts.

    The example dataset of the Bioconductor package muscat (Crowell et al., *muscat detects
    subpopulation-specific state transitions from multi-sample multi-condition single-cell
    transcriptomics data*, Nat Commun 11:6077, 2020), built from the Kang et al. (2018) PBMCs
    (GEO GSE96583, batch 2; ExperimentHub EH2259): unassigned cells and multiplets removed, two
    donors (101, 107) each control and interferon-beta stimulated, five cell types, genes with a
    count above 1 in more than 50 cells (1,267 genes: a filtered gene space, not the full one),
    at most about 100 cells per type and sample. Taken from muscat's ``data/example_sce.rda`` at
    commit 9c7e814 (GitHub ``HelenaLC/muscat``; the package is GPL-3, the data are public on GEO);
    only the counts, the cell metadata and the authors' t-SNE were kept. It ships inside the
    package (1.5 MB), so it works offline.

    Unlike :func:`kang_ifnb`, its cells carry donors and samples, so per-sample statistics
    (:func:`scsig.get.hit_fractions` with ``sample_key="sample_id"``) and batch covariates work.
    A model attributes its cells over the 1,267 genes present only: for a model trained on a full
    gene space most of its genes are then zeros, so prefer :func:`kang_ifnb` with ``"pbmc-demo"``.

    Returns
    -------
    A new AnnData on every call (1,556 cells x 1,267 genes) with

    ``X``
        Raw UMI counts, CSR ``int32``.
    ``obs["group_id"]``
        Categorical condition, ``"ctrl"`` (750 cells) or ``"stim"`` (806).
    ``obs["sample_id"]``
        Categorical sample (donor and condition): ctrl101, ctrl107, stim101, stim107.
    ``obs["cluster_id"]``
        Categorical cell type, 5 levels: B cells, CD14+ Monocytes, CD4 T cells, CD8 T cells,
        FCGR3A+ Monocytes.
    ``obs["n_counts"]``, ``obs["n_genes"]``
        Total counts and detected genes per cell.
    ``obsm["X_tsne"]``
        The authors' t-SNE coordinates.
    ``var["gene_symbol"]``, ``var["gene_ids"]``
        Gene symbols (also the ``var_names``) and Ensembl IDs.

    Examples
    --------
    >>> import scsig as sg
    >>> adata = sg.datasets.kang_muscat()
    >>> adata.shape
    (1556, 1267)
    >>> adata.obs["sample_id"].cat.categories.tolist()
    ['ctrl101', 'ctrl107', 'stim101', 'stim107']
    """
    return read_bundled("kang_muscat_example.h5ad")


def pbmc3k() -> AnnData:
    """The 2,700 PBMCs of 10x Genomics' "3k PBMCs from a Healthy Donor"; raw counts, no labels.

    The cells of the scanpy and Seurat tutorials (Cell Ranger 1.1.0, hg19; the same 2,700 cells as
    :func:`scanpy.datasets.pbmc3k`, which downloads them), with the genes detected in at least 3
    cells (13,714 of 32,738). The counts come from a Seurat object in the MIT-licensed GitHub
    repository ``anzarlv/QCseq`` (``data/sample_scRNAseq.rda``); 10x Genomics' public datasets
    are CC BY 4.0. It ships inside the package (6.2 MB), so it works offline. The bundled
    ``"pbmc-demo"`` model was trained on these cells.

    Returns
    -------
    A new AnnData on every call (2,700 cells x 13,714 genes) with

    ``X``
        Raw UMI counts, CSR ``int32``.
    ``obs["orig.ident"]``
        Categorical, one sample.
    ``obs["nCount_RNA"]``, ``obs["nFeature_RNA"]``, ``obs["n_counts"]``, ``obs["n_genes"]``
        Total counts and detected genes per cell.
    ``var["gene_symbol"]``
        Gene symbols (also the ``var_names``, made unique).

    There are no cell-type labels; derive them with the usual markers (IL7R, CCR7, CD14, LYZ,
    MS4A1, CD8A, FCGR3A, MS4A7, GNLY, NKG7, FCER1A, CST3, PPBP).

    Examples
    --------
    >>> import scsig as sg
    >>> adata = sg.datasets.pbmc3k()
    >>> adata.shape
    (2700, 13714)
    """
    return read_bundled("pbmc3k.h5ad")
