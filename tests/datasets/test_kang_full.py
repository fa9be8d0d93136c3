"""sg.datasets.kang_ifnb_full: download (local HTTP server) and build from files laid out like GEO GSE96583."""

from __future__ import annotations

import gzip
import hashlib
import io

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import io as spio
from scipy import sparse

import scsig as sg
from scsig.datasets import _fetch
from scsig.datasets._kang_full import ARCHIVE, GENES, METADATA, build_kang_ifnb_full

N_GENES = 40
SYMBOLS = [f"G{i}" for i in range(N_GENES - 2)] + ["ISG15", "G3"]  # "G3" twice, as real symbol lists have repeats
CTRL = [f"AAAC{i:02d}-1" for i in range(9)]
STIM = [f"AAAC{i:02d}-1" for i in range(3)] + [f"TTTG{i:02d}-1" for i in range(5)]  # first 3 collide with CTRL


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _mtx(counts: sparse.spmatrix) -> bytes:
    buf = io.BytesIO()
    spio.mmwrite(buf, sparse.coo_matrix(counts), field="integer")
    return _gz(buf.getvalue())


def _metadata(rows: list[tuple]) -> bytes:
    # the authors wrote it from R: a header without a name for the barcode column
    lines = ["tsne1\ttsne2\tind\tstim\tcluster\tcell\tmultiplets"]
    lines += ["\t".join(str(v) for v in row) for row in rows]
    return _gz(("\n".join(lines) + "\n").encode())


@pytest.fixture
def geo_files(make_tar):
    """The three GSE96583 files with a few synthetic cells, and what the build must give back."""
    rng = np.random.default_rng(0)
    counts = {c: rng.poisson(0.8, size=(N_GENES, len(b))) for c, b in (("ctrl", CTRL), ("stim", STIM))}
    counts["stim"][N_GENES - 2] += 30  # the stimulated cells express "ISG15"
    counts = {c: sparse.csr_matrix(m) for c, m in counts.items()}
    genes = "".join(f"ENSG{i:011d}\t{s}\n" for i, s in enumerate(SYMBOLS)).encode()
    rows, expected = [], {}
    for cond, barcodes in (("ctrl", CTRL), ("stim", STIM)):
        for j, bc in enumerate(barcodes):
            donor = ("101", "1015")[j % 2]
            multiplet = "doublet" if j == 1 else "singlet"
            cell = "NA" if j == 2 else ("CD14+ Monocytes", "B cells")[j % 2]
            name = bc + "1" if cond == "stim" and bc in CTRL else bc  # the authors' renaming of repeats
            rows.append((name, 0.5 * j, -0.5 * j, donor, cond, j % 3 + 1, cell, multiplet))
            expected[f"{bc}_{cond}"] = (cond.upper(), donor, cell, multiplet, counts[cond][:, j].toarray().ravel())
    rng.shuffle(rows)  # the metadata is not in matrix order
    archive = make_tar(
        {
            "GSM2560245_A.mat.gz": _gz(b"batch 1, not used"),
            "GSM2560248_2.1.mtx.gz": _mtx(counts["ctrl"]),
            "GSM2560248_barcodes.tsv.gz": _gz(("\n".join(CTRL) + "\n").encode()),
            "GSM2560249_2.2.mtx.gz": _mtx(counts["stim"]),
            "GSM2560249_barcodes.tsv.gz": _gz(("\n".join(STIM) + "\n").encode()),
        }
    )
    files = {ARCHIVE: archive, GENES: _gz(genes), METADATA: _metadata(rows)}
    return files, expected


@pytest.fixture
def served_registry(http_server, geo_files, monkeypatch, tmp_path):
    """Point the registered GSE96583 files at the local server, with their real test hashes."""
    base, served, requests = http_server
    files, expected = geo_files
    for name, payload in files.items():
        (served / name).write_bytes(payload)
        entry = _fetch.REGISTRY[name]
        local = _fetch.RemoteFile(
            name, f"{base}/{name}", hashlib.sha256(payload).hexdigest(), len(payload), entry.description, "test"
        )
        monkeypatch.setitem(_fetch.REGISTRY, name, local)
    return tmp_path / "cache", requests, expected


def test_kang_ifnb_full_downloads_and_builds(served_registry):
    cache, requests, expected = served_registry
    adata = sg.datasets.kang_ifnb_full(cache_dir=cache, progress=False)
    assert sorted(requests) == sorted(f"/{n}" for n in (ARCHIVE, GENES, METADATA))

    singlets = {k: v for k, v in expected.items() if v[3] == "singlet" and v[2] != "NA"}
    assert set(adata.obs_names) == set(singlets)
    assert adata.n_vars == N_GENES
    assert adata.var_names.is_unique
    assert list(adata.var["gene_symbol"]) == SYMBOLS
    assert adata.var_names[-1] != "G3"
    assert adata.var["gene_ids"].iloc[0] == "ENSG00000000000"
    assert sparse.issparse(adata.X)
    assert adata.X.dtype == np.int32
    for name, (stim, donor, cell, _, column) in singlets.items():
        row = adata[name]
        np.testing.assert_array_equal(row.X.toarray().ravel(), column)
        assert row.obs["stim"].iloc[0] == stim
        assert row.obs["donor"].iloc[0] == donor
        assert row.obs["sample"].iloc[0] == f"{donor}_{stim}"
        assert row.obs["cell_type"].iloc[0] == cell
    assert list(adata.obs["stim"].cat.categories) == ["CTRL", "STIM"]
    np.testing.assert_array_equal(adata.obs["n_counts"], np.asarray(adata.X.sum(axis=1)).ravel())
    assert adata.obsm["X_tsne"].shape == (adata.n_obs, 2)
    assert adata.uns["dataset"]["files"][ARCHIVE]["sha256"] == _fetch.REGISTRY[ARCHIVE].sha256

    # a second call is served from the cache
    again = sg.datasets.kang_ifnb_full(cache_dir=cache, progress=False, singlets_only=False)
    assert len(requests) == 3
    assert set(again.obs_names) == set(expected)
    assert set(again.obs["multiplets"]) == {"singlet", "doublet"}


def test_kang_ifnb_full_round_trips_h5ad(served_registry, tmp_path):
    cache, _, _ = served_registry
    adata = sg.datasets.kang_ifnb_full(cache_dir=cache, progress=False)
    adata.write_h5ad(tmp_path / "kang.h5ad")
    back = ad.read_h5ad(tmp_path / "kang.h5ad")
    assert (back.X != adata.X).nnz == 0
    pd.testing.assert_frame_equal(back.obs, adata.obs)


def test_kang_ifnb_full_refuses_a_changed_file(served_registry, http_server):
    cache, _, _ = served_registry
    _, served, _ = http_server
    (served / METADATA).write_bytes(_gz(b"tampered\n"))
    with pytest.raises(ValueError, match="(?i)hash"):
        sg.datasets.kang_ifnb_full(cache_dir=cache, progress=False)


def test_build_rejects_files_that_do_not_belong_together(geo_files, tmp_path, make_tar):
    files, _ = geo_files
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    meta = pd.read_csv(tmp_path / METADATA, sep="\t")
    meta.drop(index=meta.index[meta["stim"] == "ctrl"][:1]).to_csv(
        tmp_path / "short.tsv.gz", sep="\t", index_label=False
    )
    with pytest.raises(ValueError, match="no row in the GSE96583 metadata"):
        build_kang_ifnb_full(tmp_path / ARCHIVE, tmp_path / GENES, tmp_path / "short.tsv.gz")
    extra = pd.concat([meta, meta.iloc[:1].set_axis(["GGGG00-1"], axis=0)])
    extra.to_csv(tmp_path / "extra.tsv.gz", sep="\t", index_label=False)
    with pytest.warns(UserWarning, match="1 .* not in the count matrix"):
        built = build_kang_ifnb_full(tmp_path / ARCHIVE, tmp_path / GENES, tmp_path / "extra.tsv.gz")
    assert "GGGG00-1" not in "".join(built.obs_names)
    (tmp_path / "genes_short.tsv.gz").write_bytes(_gz(b"ENSG0\tA\nENSG1\tB\n"))
    with pytest.raises(ValueError, match="do not belong together"):
        build_kang_ifnb_full(tmp_path / ARCHIVE, tmp_path / "genes_short.tsv.gz", tmp_path / METADATA)
    (tmp_path / "other.tar").write_bytes(make_tar({"readme.txt": b"x"}))
    with pytest.raises(ValueError, match="not the GSE96583 archive"):
        build_kang_ifnb_full(tmp_path / "other.tar", tmp_path / GENES, tmp_path / METADATA)


def test_kang_ifnb_full_is_registered():
    frame = sg.datasets.registry()
    assert {ARCHIVE, GENES, METADATA} <= set(frame.index)
    assert all(frame.loc[[ARCHIVE, GENES, METADATA], "url"].str.startswith("https://ftp.ncbi.nlm.nih.gov/geo/"))
