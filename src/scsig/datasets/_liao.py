"""``sg.datasets.liao_bal``: bronchoalveolar immune cells with T-cell receptor calls (Liao et al. 2020)."""

from __future__ import annotations

import gzip
import io
import tarfile
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._docs import doc_params, doc_progress
from ._fetch import REGISTRY, fetch

if TYPE_CHECKING:
    import os
    from pathlib import Path

    from anndata import AnnData

__all__ = ["liao_bal"]

ARCHIVE = "scirpy-0.22.5.tar.gz"
FOLDER = "scirpy-0.22.5/docs/tutorials/example_data/liao-2019-covid19/"
# patient: (GEO sample of the expression library, its 10x h5 file, the TCR contig table)
PATIENTS = {
    "C144": (
        "GSM4339772",
        "GSM4339772_C144_filtered_feature_bc_matrix.h5",
        "GSM4385993_C144_filtered_contig_annotations.csv.gz",
    ),
    "C146": (
        "GSM4339774",
        "GSM4339774_C146_filtered_feature_bc_matrix.h5",
        "GSM4385995_C146_filtered_contig_annotations.csv.gz",
    ),
    "C149": (
        "GSM4475052",
        "GSM4475052_C149_filtered_feature_bc_matrix.h5",
        "GSM4475055_C149_filtered_contig_annotations.csv.gz",
    ),
}
TCR_CATEGORIES = ["TRA+TRB", "TRA", "TRB", "none"]


@doc_params(doc_progress=doc_progress)
def liao_bal(
    *,
    min_genes: int | None = 200,
    max_pct_mito: float | None = 10.0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> AnnData:
    """Immune cells of the lung (bronchoalveolar lavage) of 3 COVID-19 patients, with T-cell receptor calls.

    10x Genomics 5' gene expression of bronchoalveolar lavage fluid from patients C144, C146 and
    C149 of Liao M et al., *Single-cell landscape of bronchoalveolar immune cells in patients with
    COVID-19*, Nat Med 26:842-844 (2020), doi:10.1038/s41591-020-0901-9 (GEO GSE145926), with
    each library's T-cell receptor (TCR) sequencing from the same cells. The Cell Ranger outputs
    of these three patients ship inside the source distribution of scirpy 0.22.5 (BSD-3-Clause),
    so they are downloaded from PyPI, which pip users can reach, and checked against the SHA-256
    PyPI publishes for that file (see :func:`~scsig.datasets.registry`). The 37 MB archive is
    kept in the cache; the AnnData is built from it in memory in seconds.

    What it is for: labels that do not come from expression. A cell with a productive TCR chain
    was sequenced as a T cell; its label owes nothing to the marker genes a signature scores. Those
    cells are few (553 of the 5,670 that pass the default QC) and a T cell's receptor is not
    always captured, so cells with ``"none"`` include some T cells. The tissue (lung, mostly
    macrophages), the 5' chemistry and the patients differ from blood, which makes it a hard test
    for a model trained on PBMCs.

    Parameters
    ----------
    min_genes
        Keep cells with at least this many detected genes (``None``: no filter).
    max_pct_mito
        Keep cells with at most this percentage of counts in mitochondrial genes (``MT-``;
        ``None``: no filter). Patient C144's library is mostly cells with over 90 %.
    cache_dir
        Folder for the downloaded archive; see :func:`~scsig.datasets.fetch`.
    {doc_progress}

    Returns
    -------
    A new AnnData (cells x 33,539 genes) with

    ``X``
        Raw UMI counts, CSR ``int32``.
    ``obs["patient"]``, ``obs["sample"]``
        Categorical patient (``"C144"``, ``"C146"``, ``"C149"``) and GEO sample of the expression library.
    ``obs["tcr"]``
        Categorical: the productive TCR chains Cell Ranger assembled for the cell (``"TRA+TRB"``,
        ``"TRA"``, ``"TRB"``) or ``"none"``.
    ``obs["n_counts"]``, ``obs["n_genes"]``, ``obs["pct_mito"]``
        Total counts, detected genes and percentage of mitochondrial counts per cell.
    ``var["gene_ids"]``, ``var["gene_symbol"]``
        Ensembl IDs and symbols (GRCh38 with the SARS-CoV-2 genome the authors added). The
        ``var_names`` are the symbols, made unique the way
        :meth:`anndata.AnnData.var_names_make_unique` does.
    ``uns["dataset"]``
        Where the data came from: paper, accession, archive URL and SHA-256, the QC applied.

    ``obs_names`` are ``"<barcode>_<patient>"``, e.g. ``"AAACCTGAGCGAAGGG-1_C149"``.

    Examples
    --------
    >>> import scsig as sg
    >>> adata = sg.datasets.liao_bal()  # doctest: +SKIP
    >>> adata.obs.groupby(["patient", "tcr"], observed=True).size().unstack()  # doctest: +SKIP
    """
    if min_genes is not None and min_genes < 0:
        msg = f"min_genes must be a non-negative number of genes or None, got {min_genes!r}."
        raise ValueError(msg)
    if max_pct_mito is not None and not 0 <= max_pct_mito <= 100:
        msg = f"max_pct_mito must be a percentage in [0, 100] or None, got {max_pct_mito!r}."
        raise ValueError(msg)
    path = fetch(ARCHIVE, cache_dir=cache_dir, progress=progress)
    start = logg.info("building the Liao et al. 2020 AnnData from the archive")
    adata = build_liao_bal(path, min_genes=min_genes, max_pct_mito=max_pct_mito)
    adata.uns["dataset"] = {
        "name": "Liao et al. 2020, bronchoalveolar lavage, patients C144, C146, C149 (GEO GSE145926)",
        "doi": "10.1038/s41591-020-0901-9",
        "files": {ARCHIVE: {"url": REGISTRY[ARCHIVE].url, "sha256": REGISTRY[ARCHIVE].sha256}},
        "min_genes": -1 if min_genes is None else int(min_genes),
        "max_pct_mito": -1.0 if max_pct_mito is None else float(max_pct_mito),
    }
    logg.info(f"    {adata.n_obs} cells x {adata.n_vars} genes", time=start)
    return adata


def _read_members(archive: tarfile.TarFile, names: list[str]) -> dict[str, bytes]:
    """The files ``names`` of the archive's data folder, read in one pass over the (gzip) stream."""
    wanted = {FOLDER + name: name for name in names}
    found = {}
    for member in archive:
        if member.name in wanted and member.isfile():
            found[wanted[member.name]] = archive.extractfile(member).read()
    missing = [FOLDER + name for name in names if name not in found]
    if missing:
        msg = (
            f"{missing[0]!r} is missing from {archive.name!r}; it is not scirpy 0.22.5's source archive. "
            "Delete it from the cache to download it again."
        )
        raise ValueError(msg)
    return found


def _read_10x_h5(payload: bytes, where: str):
    """(cells x features CSR int32, barcodes, feature table) of a Cell Ranger v3 ``filtered_feature_bc_matrix.h5``."""
    import h5py
    from scipy import sparse

    with h5py.File(io.BytesIO(payload), "r") as f:
        if "matrix" not in f:
            msg = f"{where} is not a Cell Ranger v3 feature-barcode matrix (no 'matrix' group)."
            raise ValueError(msg)
        m = f["matrix"]
        n_features, n_cells = (int(v) for v in m["shape"][()])
        # stored by barcode: the indptr runs over cells, the indices are features
        x = sparse.csr_matrix(
            (m["data"][()].astype(np.int32), m["indices"][()], m["indptr"][()]), shape=(n_cells, n_features)
        )
        barcodes = pd.Index([b.decode() for b in m["barcodes"][()]])
        features = pd.DataFrame(
            {
                "gene_ids": [v.decode() for v in m["features/id"][()]],
                "gene_symbol": [v.decode() for v in m["features/name"][()]],
                "feature_type": [v.decode() for v in m["features/feature_type"][()]],
            }
        )
    return x, barcodes, features


def _tcr_calls(payload: bytes, barcodes: pd.Index) -> pd.Categorical:
    """Per barcode, the productive TRA/TRB chains of a Cell Ranger ``filtered_contig_annotations.csv``."""
    contigs = pd.read_csv(io.BytesIO(gzip.decompress(payload)), dtype=str, keep_default_na=False)
    needed = {"barcode", "chain", "productive"}
    if not needed <= set(contigs.columns):
        msg = f"The contig table lacks the columns {sorted(needed - set(contigs.columns))}; it is not Cell Ranger's."
        raise ValueError(msg)
    productive = contigs[contigs["productive"].str.lower() == "true"]
    chains = productive.groupby("barcode")["chain"].agg(lambda c: set(c))
    tra = chains.map(lambda c: "TRA" in c).reindex(barcodes, fill_value=False).to_numpy(dtype=bool)
    trb = chains.map(lambda c: "TRB" in c).reindex(barcodes, fill_value=False).to_numpy(dtype=bool)
    call = np.where(tra & trb, "TRA+TRB", np.where(tra, "TRA", np.where(trb, "TRB", "none")))
    return pd.Categorical(call, categories=TCR_CATEGORIES)


def build_liao_bal(
    archive: str | os.PathLike | Path,
    *,
    min_genes: int | None = 200,
    max_pct_mito: float | None = 10.0,
) -> AnnData:
    """Build the AnnData of :func:`liao_bal` from a local copy of scirpy 0.22.5's source archive."""
    import anndata as ad
    from anndata.utils import make_index_unique
    from scipy import sparse

    with tarfile.open(archive, "r:gz") as tar:
        files = _read_members(tar, [name for _, *names in PATIENTS.values() for name in names])
    blocks, obs_parts, reference = [], [], None
    for patient, (sample, matrix_name, contig_name) in PATIENTS.items():
        x, barcodes, features = _read_10x_h5(files[matrix_name], matrix_name)
        if reference is None:
            reference = features
        elif not features[["gene_ids"]].equals(reference[["gene_ids"]]):
            msg = f"{matrix_name} has other features than {PATIENTS['C144'][1]}; the archive is inconsistent."
            raise ValueError(msg)
        obs_parts.append(
            pd.DataFrame(
                {"patient": patient, "sample": sample, "tcr": _tcr_calls(files[contig_name], barcodes)},
                index=barcodes + f"_{patient}",
            )
        )
        blocks.append(x)
    genes = (reference["feature_type"] == "Gene Expression").to_numpy()
    x = sparse.vstack(blocks, format="csr")[:, genes]
    x.sort_indices()
    var = reference.loc[genes, ["gene_ids", "gene_symbol"]].reset_index(drop=True)
    var.index = make_index_unique(pd.Index(var["gene_symbol"].to_numpy()))
    obs = pd.concat(obs_parts)
    obs["tcr"] = pd.Categorical(obs["tcr"], categories=TCR_CATEGORIES)
    for col in ("patient", "sample"):
        obs[col] = pd.Categorical(obs[col])
    n_counts = np.asarray(x.sum(axis=1)).ravel()
    mito = var["gene_symbol"].str.upper().str.startswith("MT-").to_numpy()
    mito_counts = np.asarray(x[:, mito].sum(axis=1)).ravel()
    obs["n_counts"] = n_counts
    obs["n_genes"] = np.diff(x.indptr)
    obs["pct_mito"] = 100.0 * mito_counts / np.maximum(n_counts, 1)
    keep = np.ones(len(obs), dtype=bool)
    if min_genes is not None:
        keep &= obs["n_genes"].to_numpy() >= min_genes
    if max_pct_mito is not None:
        keep &= obs["pct_mito"].to_numpy() <= max_pct_mito
    return ad.AnnData(x[keep], obs=obs.loc[keep], var=var)
