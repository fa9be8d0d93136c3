"""``sg.datasets.kang_ifnb_full``: all batch-2 cells of Kang et al. 2018, built from the GEO files."""

from __future__ import annotations

import gzip
import os
import tarfile
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._docs import doc_params, doc_progress
from .._utils._warn import user_stacklevel
from ._fetch import REGISTRY, fetch

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

__all__ = ["kang_ifnb_full"]

ARCHIVE = "GSE96583_RAW.tar"
GENES = "GSE96583_batch2.genes.tsv.gz"
METADATA = "GSE96583_batch2.total.tsne.df.tsv.gz"

# batch 2 in the GEO archive: one Matrix Market file (genes x barcodes) and one barcode list per condition
CONDITIONS = {
    "ctrl": ("GSM2560248_2.1.mtx.gz", "GSM2560248_barcodes.tsv.gz"),
    "stim": ("GSM2560249_2.2.mtx.gz", "GSM2560249_barcodes.tsv.gz"),
}
METADATA_COLUMNS = ("tsne1", "tsne2", "ind", "stim", "cluster", "cell", "multiplets")


@doc_params(doc_progress=doc_progress)
def kang_ifnb_full(
    *,
    singlets_only: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> AnnData:
    """All batch-2 PBMCs of Kang et al. (2018), with donors, downloaded from GEO; raw counts.

    The larger public version of :func:`~scsig.datasets.kang_ifnb`: PBMCs of 8 lupus patients,
    cultured 6 h with or without recombinant IFN-beta, pooled and demultiplexed by genotype
    (Kang HM et al., *Multiplexed droplet single-cell RNA-sequencing using natural genetic
    variation*, Nat Biotechnol 36:89-94, 2018, doi:10.1038/nbt.4042; GEO GSE96583, batch 2).
    Unlike the bundled subset it keeps the donor of every cell, so per-sample statistics
    (:func:`scsig.get.hit_fractions` with ``sample_key="sample"``) have 8 donors x 2 conditions.

    Three files are downloaded once from GEO's stable FTP address with :func:`~scsig.datasets.fetch`
    and checked against pinned SHA-256 hashes (see :func:`~scsig.datasets.registry`): the 76 MB
    ``GSE96583_RAW.tar`` (count matrices), ``GSE96583_batch2.genes.tsv.gz`` (genes) and
    ``GSE96583_batch2.total.tsne.df.tsv.gz`` (the authors' per-cell metadata). The AnnData is
    then built from them in memory, which takes seconds; nothing but the downloads is written.

    Barcodes repeat between the two conditions; in the authors' metadata a stimulated barcode that
    also occurs among the controls carries one extra trailing ``"1"`` (``...-11`` for ``...-1``).
    Those are matched back to the barcode in the count matrix, and every cell of the matrices must
    find its metadata row, or the build stops with an error.

    Parameters
    ----------
    singlets_only
        Keep only the cells the authors call singlets and gave a cell type (about 24,700 of
        29,065). With ``False`` all barcodes are kept and ``obs["multiplets"]`` tells them apart.
    cache_dir
        Folder for the downloaded files; see :func:`~scsig.datasets.fetch`.
    {doc_progress}

    Returns
    -------
    A new AnnData (cells x 35,635 genes) with

    ``X``
        Raw UMI counts, CSR ``int32``.
    ``obs["stim"]``
        Categorical ``"CTRL"`` / ``"STIM"``, as in :func:`~scsig.datasets.kang_ifnb`.
    ``obs["donor"]``, ``obs["sample"]``
        Categorical donor ID (8 donors, e.g. ``"1015"``) and donor x condition (16, e.g. ``"1015_STIM"``).
    ``obs["cell_type"]``
        Categorical cell type as annotated by the authors (e.g. ``"CD14+ Monocytes"``,
        ``"CD4 T cells"``, ``"B cells"``, ``"NK cells"``).
    ``obs["cluster"]``, ``obs["multiplets"]``
        The authors' cluster number and singlet/doublet call.
    ``obs["n_counts"]``, ``obs["n_genes"]``
        Total counts and detected genes per cell.
    ``obsm["X_tsne"]``
        The authors' t-SNE coordinates.
    ``var["gene_ids"]``, ``var["gene_symbol"]``
        Ensembl IDs and symbols. The ``var_names`` are the symbols, made unique the way
        :meth:`anndata.AnnData.var_names_make_unique` does (``"-1"``, ``"-2"``, ... on repeats).
    ``uns["dataset"]``
        Where the data came from: accession, URLs and SHA-256 of the files.

    ``obs_names`` are ``"<barcode>_<condition>"``, e.g. ``"AAACATACAATGCC-1_ctrl"``.

    Examples
    --------
    >>> import scsig as sg
    >>> adata = sg.datasets.kang_ifnb_full()  # doctest: +SKIP
    >>> adata.obs.groupby(["donor", "stim"], observed=True).size().unstack()  # doctest: +SKIP
    """
    paths = {name: fetch(name, cache_dir=cache_dir, progress=progress) for name in (ARCHIVE, GENES, METADATA)}
    start = logg.info("building the Kang et al. 2018 batch-2 AnnData from the GEO files")
    adata = build_kang_ifnb_full(paths[ARCHIVE], paths[GENES], paths[METADATA], singlets_only=singlets_only)
    adata.uns["dataset"] = {
        "name": "Kang et al. 2018, GEO GSE96583 batch 2",
        "doi": "10.1038/nbt.4042",
        "files": {name: {"url": REGISTRY[name].url, "sha256": REGISTRY[name].sha256} for name in paths},
        "singlets_only": singlets_only,
    }
    logg.info(f"    {adata.n_obs} cells x {adata.n_vars} genes", time=start)
    return adata


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """The authors' per-cell table, indexed by barcode as written (header without the index column)."""
    meta = pd.read_csv(path, sep="\t", dtype={"ind": str, "stim": str, "cell": str, "multiplets": str})
    missing = [c for c in METADATA_COLUMNS if c not in meta.columns]
    if missing:
        msg = (
            f"{os.fspath(path)!r} lacks the columns {missing} of the GSE96583 batch-2 metadata "
            f"(found {list(meta.columns)}). Delete the cached file so that it is downloaded again."
        )
        raise ValueError(msg)
    meta.index = meta.index.astype(str)
    return meta


def _match_barcodes(meta: pd.DataFrame, barcodes: pd.Index, condition: str) -> pd.DataFrame:
    """Metadata rows of one condition, in the order of the matrix ``barcodes``."""
    rows = meta.loc[meta["stim"] == condition]
    known = set(barcodes)
    index = [b[:-1] if b not in known and b.endswith("1") and b[:-1] in known else b for b in rows.index]
    rows = rows.set_axis(pd.Index(index, name="barcode"), axis=0)
    if not rows.index.is_unique:
        msg = f"The GSE96583 metadata lists some {condition} barcodes twice; the downloaded files are inconsistent."
        raise ValueError(msg)
    missing = barcodes.difference(rows.index)
    if len(missing):
        msg = (
            f"{len(missing)} {condition} barcodes of the count matrix have no row in the GSE96583 metadata "
            f"(e.g. {list(missing[:3])}); the downloaded files do not belong together."
        )
        raise ValueError(msg)
    unmatched = len(rows) - len(barcodes)
    if unmatched:
        msg = (
            f"{unmatched} {condition} barcodes of the GSE96583 metadata are not in the count matrix; they are left out."
        )
        warnings.warn(msg, UserWarning, stacklevel=user_stacklevel())
    return rows.loc[barcodes]


def _read_member(archive: tarfile.TarFile, name: str):
    try:
        member = archive.getmember(name)
    except KeyError:
        member = None
    if member is None or not member.isfile():
        msg = f"{name!r} is missing from {archive.name!r}; it is not the GSE96583 archive. Delete it to download again."
        raise ValueError(msg)
    return gzip.open(archive.extractfile(member))


def build_kang_ifnb_full(
    archive: str | os.PathLike | Path,
    genes: str | os.PathLike | Path,
    metadata: str | os.PathLike | Path,
    *,
    singlets_only: bool = True,
) -> AnnData:
    """Build the batch-2 AnnData of :func:`kang_ifnb_full` from the three local GEO files."""
    import anndata as ad
    from anndata.utils import make_index_unique
    from scipy import io as spio
    from scipy import sparse

    gene_table = pd.read_csv(genes, sep="\t", header=None, dtype=str, keep_default_na=False)
    if gene_table.shape[1] < 2:
        msg = f"{os.fspath(genes)!r} should have two tab-separated columns (Ensembl ID, symbol)."
        raise ValueError(msg)
    meta = read_metadata(metadata)

    blocks, obs_parts = [], []
    with tarfile.open(archive, "r:") as tar:
        for condition, (matrix_name, barcode_name) in CONDITIONS.items():
            with _read_member(tar, barcode_name) as handle:
                barcodes = pd.Index(pd.read_csv(handle, sep="\t", header=None, dtype=str)[0].to_numpy())
            with _read_member(tar, matrix_name) as handle:
                counts = spio.mmread(handle)
            if counts.shape != (len(gene_table), len(barcodes)):
                msg = (
                    f"{matrix_name} is {counts.shape[0]} x {counts.shape[1]}, but there are {len(gene_table)} genes "
                    f"and {len(barcodes)} barcodes; the downloaded files do not belong together."
                )
                raise ValueError(msg)
            rows = _match_barcodes(meta, barcodes, condition)
            blocks.append(sparse.csr_matrix(counts.T, dtype=np.int32))
            obs_parts.append(rows.set_axis(barcodes + f"_{condition}", axis=0))

    obs = pd.concat(obs_parts)
    x = sparse.vstack(blocks, format="csr")
    if singlets_only:
        keep = ((obs["multiplets"] == "singlet") & obs["cell"].notna()).to_numpy()
        obs, x = obs.loc[keep], x[keep]
    x.sort_indices()

    stim = obs["stim"].str.upper()
    donor = obs["ind"].astype(str)
    table = pd.DataFrame(
        {
            "stim": pd.Categorical(stim, categories=["CTRL", "STIM"]),
            "donor": pd.Categorical(donor),
            "sample": pd.Categorical(donor + "_" + stim),
            "cell_type": pd.Categorical(obs["cell"]),
            "cluster": pd.Categorical(obs["cluster"]),
            "multiplets": pd.Categorical(obs["multiplets"]),
            "n_counts": np.asarray(x.sum(axis=1)).ravel(),
            "n_genes": np.diff(x.indptr),
        },
        index=obs.index.rename(None),
    )
    var = pd.DataFrame(
        {"gene_ids": gene_table[0].to_numpy(), "gene_symbol": gene_table[1].to_numpy()},
        index=make_index_unique(pd.Index(gene_table[1].to_numpy())),
    )
    adata = ad.AnnData(x, obs=table, var=var)
    adata.obsm["X_tsne"] = obs[["tsne1", "tsne2"]].to_numpy(dtype=np.float64)
    return adata
