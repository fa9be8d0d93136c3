"""sg.datasets.liao_bal: download (local HTTP server) and build from an archive laid out like scirpy 0.22.5's."""

from __future__ import annotations

import gzip
import hashlib
import io

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scsig as sg
from scsig.datasets import _fetch
from scsig.datasets._liao import ARCHIVE, FOLDER, PATIENTS, build_liao_bal

GENES = ["MT-CO1", "CD3E", "CD3E", "LYZ"] + [f"G{i}" for i in range(26)]  # a repeated symbol, as real lists have
N_CELLS = 8


def _h5(counts: sparse.csr_matrix, barcodes: list[str], types: list[str]) -> bytes:
    """A Cell Ranger v3 filtered_feature_bc_matrix.h5 (stored by barcode) in memory."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = counts.data, counts.indices, counts.indptr
        m["shape"] = np.array([counts.shape[1], counts.shape[0]])
        m["barcodes"] = np.array([b.encode() for b in barcodes])
        feats = m.create_group("features")
        feats["id"] = np.array([f"ENSG{i:011d}".encode() for i in range(len(types))])
        feats["name"] = np.array([g.encode() for g in GENES] + [b"CD3E_TotalSeqC"] * (len(types) - len(GENES)))
        feats["feature_type"] = np.array([t.encode() for t in types])
    return buf.getvalue()


def _contigs(rows: list[tuple[str, str, str]]) -> bytes:
    lines = ["barcode,is_cell,contig_id,chain,productive,cdr3"]
    lines += [f"{b},True,{b}_contig_{i},{chain},{prod},CASS" for i, (b, chain, prod) in enumerate(rows)]
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


@pytest.fixture
def archive_and_expected(make_tar):
    """An archive with the three patients' files (a few synthetic cells each) and what the build must give."""
    rng = np.random.default_rng(0)
    types = ["Gene Expression"] * len(GENES)
    members, expected = {"scirpy-0.22.5/README.md": b"not used"}, {}
    for k, (patient, (_, matrix_name, contig_name)) in enumerate(PATIENTS.items()):
        dense = rng.poisson(12, size=(N_CELLS, len(GENES)))
        dense[0, 0] = 5000  # mostly mitochondrial: removed by the default QC
        dense[1, 4:] = 0  # 4 genes detected
        barcodes = [f"AAAC{k}{i:02d}-1" for i in range(N_CELLS)]  # the same barcode can recur between patients
        contigs = [
            (barcodes[2], "TRA", "True"),
            (barcodes[2], "TRB", "True"),
            (barcodes[3], "TRB", "True"),
            (barcodes[3], "TRA", "False"),  # not productive: not counted
            (barcodes[4], "TRA", "True"),
            (barcodes[5], "IGH", "True"),  # a B-cell chain: not a TCR
        ]
        counts = sparse.csr_matrix(dense)
        file_types = [*types, "Antibody Capture"]  # features other than genes are dropped
        counts = sparse.hstack([counts, sparse.csr_matrix(np.ones((N_CELLS, 1), dtype=int))], format="csr")
        members[FOLDER + matrix_name] = _h5(counts, barcodes, file_types)
        members[FOLDER + contig_name] = _contigs(contigs)
        calls = {barcodes[2]: "TRA+TRB", barcodes[3]: "TRB", barcodes[4]: "TRA"}
        for i, b in enumerate(barcodes):
            expected[f"{b}_{patient}"] = (patient, calls.get(b, "none"), dense[i])
    return make_tar(members, gz=True), expected


def test_build_reads_counts_tcr_calls_and_qc(archive_and_expected, tmp_path):
    payload, expected = archive_and_expected
    (tmp_path / ARCHIVE).write_bytes(payload)
    everything = build_liao_bal(tmp_path / ARCHIVE, min_genes=None, max_pct_mito=None)
    assert set(everything.obs_names) == set(expected)
    assert everything.n_vars == len(GENES)  # "Antibody Capture" dropped
    assert list(everything.var["gene_symbol"]) == GENES
    assert everything.var_names.is_unique
    assert everything.var_names[2] == "CD3E-1"
    assert everything.X.dtype == np.int32
    for name, (patient, tcr, row) in expected.items():
        cell = everything[name]
        np.testing.assert_array_equal(cell.X.toarray().ravel(), row)
        assert cell.obs["patient"].iloc[0] == patient
        assert cell.obs["tcr"].iloc[0] == tcr
    assert list(everything.obs["tcr"].cat.categories) == ["TRA+TRB", "TRA", "TRB", "none"]
    dense = everything.X.toarray()
    np.testing.assert_array_equal(everything.obs["n_counts"], dense.sum(axis=1))
    np.testing.assert_array_equal(everything.obs["n_genes"], (dense > 0).sum(axis=1))
    np.testing.assert_allclose(everything.obs["pct_mito"], 100 * dense[:, 0] / dense.sum(axis=1))

    assert build_liao_bal(tmp_path / ARCHIVE).n_obs == 0  # the default 200 genes: more than these cells have
    qc = build_liao_bal(tmp_path / ARCHIVE, min_genes=5, max_pct_mito=10)
    dropped = {n for n in expected if n.startswith(("AAAC000", "AAAC001", "AAAC100", "AAAC101", "AAAC200", "AAAC201"))}
    assert set(qc.obs_names) == set(expected) - dropped


@pytest.fixture
def served_archive(http_server, archive_and_expected, monkeypatch, tmp_path):
    base, served, requests = http_server
    payload, expected = archive_and_expected
    (served / ARCHIVE).write_bytes(payload)
    entry = _fetch.REGISTRY[ARCHIVE]
    local = _fetch.RemoteFile(
        ARCHIVE, f"{base}/{ARCHIVE}", hashlib.sha256(payload).hexdigest(), len(payload), entry.description, "test"
    )
    monkeypatch.setitem(_fetch.REGISTRY, ARCHIVE, local)
    return tmp_path / "cache", requests, expected


def test_liao_bal_downloads_once_builds_and_round_trips(served_archive, tmp_path):
    cache, requests, expected = served_archive
    adata = sg.datasets.liao_bal(min_genes=5, cache_dir=cache, progress=False)
    assert requests == [f"/{ARCHIVE}"]
    assert adata.n_obs == len(expected) - 6
    assert adata.uns["dataset"]["files"][ARCHIVE]["sha256"] == _fetch.REGISTRY[ARCHIVE].sha256
    assert adata.uns["dataset"]["min_genes"] == 5
    adata.write_h5ad(tmp_path / "liao.h5ad")
    back = ad.read_h5ad(tmp_path / "liao.h5ad")
    assert (back.X != adata.X).nnz == 0
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    again = sg.datasets.liao_bal(min_genes=None, max_pct_mito=None, cache_dir=cache, progress=False)
    assert len(requests) == 1  # from the cache
    assert again.n_obs == len(expected)


def test_liao_bal_refuses_a_changed_archive_and_bad_arguments(served_archive, http_server):
    cache, _, _ = served_archive
    with pytest.raises(ValueError, match="max_pct_mito"):
        sg.datasets.liao_bal(max_pct_mito=150, cache_dir=cache)
    with pytest.raises(ValueError, match="min_genes"):
        sg.datasets.liao_bal(min_genes=-1, cache_dir=cache)
    _, served, _ = http_server
    (served / ARCHIVE).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="(?i)hash"):
        sg.datasets.liao_bal(cache_dir=cache, progress=False)


def test_build_rejects_another_archive(tmp_path, make_tar):
    (tmp_path / "other.tar.gz").write_bytes(make_tar({"readme.txt": b"x"}, gz=True))
    with pytest.raises(ValueError, match="not scirpy 0.22.5's source archive"):
        build_liao_bal(tmp_path / "other.tar.gz")


def test_liao_bal_is_registered_at_pypi():
    frame = sg.datasets.registry()
    assert frame.loc[ARCHIVE, "url"].startswith("https://files.pythonhosted.org/")
    assert frame.loc[ARCHIVE, "url"].endswith("/" + ARCHIVE)
