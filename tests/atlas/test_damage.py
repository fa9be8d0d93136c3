"""Damaged atlas files never give wrong answers: every damage raises on read or is reported by verify()."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

import scsig as sg
from scsig.atlas import _manifest as mf
from scsig.atlas import _query, _store
from scsig.atlas._checks import DamagedDatasetError

from .conftest import synthetic_adata

GENES = [f"G{i}" for i in range(40)]
DAMAGES = ["truncate", "flip", "delete", "empty"]


@pytest.fixture(scope="module")
def small_atlas(tmp_path_factory):
    """Two datasets ('A/1' is damaged below, 'B' never is), with small chunks so arrays span several files."""
    root = tmp_path_factory.mktemp("damage") / "atlas"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_store, "CHUNK", 16)
        mp.setattr(_store, "SHARD", 64)
        atlas = sg.Atlas.create(root, gene_order=GENES)
        a = synthetic_adata(50, GENES, seed=1)
        a.obs["batch/lane"] = pd.Categorical([f"l{i % 2}" for i in range(50)])
        atlas.add(a, name="A/1", progress=False)
        atlas.add(synthetic_adata(30, GENES, seed=2, prefix="b"), name="B", progress=False)
    return root


def _clear_caches(monkeypatch):
    monkeypatch.setattr(_query, "_READERS", type(_query._READERS)())
    monkeypatch.setattr(_query, "_OBS", type(_query._OBS)())
    monkeypatch.setattr(_query, "_CHECKED", set())


def _read_all(root):
    """Everything a user reads: scores over all genes, the matrix, the metadata."""
    atlas = sg.Atlas.open(root)
    scores = atlas.score(GENES, progress=False)
    mat = atlas.to_anndata(progress=False)
    return scores, mat.layers["attr_ig"].toarray(), atlas.obs()


def _same(a, b):
    try:
        pd.testing.assert_frame_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        pd.testing.assert_frame_equal(a[2], b[2])
    except AssertionError:
        return False
    return True


def _damage(path, how):
    raw = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    else:  # flip 8 bytes (all of a shorter file) in the middle
        mid = max(0, len(raw) // 2 - 4)
        flipped = bytes(b ^ 0x5A for b in raw[mid : mid + 8])
        path.write_bytes(raw[:mid] + flipped + raw[mid + 8 :])
    return raw


def test_every_damage_is_detected(small_atlas, tmp_path, monkeypatch):
    root = tmp_path / "atlas"
    shutil.copytree(small_atlas, root)
    _clear_caches(monkeypatch)
    expected = _read_all(root)
    entries = {s["name"]: s for s in mf.read_manifest(root)["shards"]}
    shard_a = root / "shards" / entries["A/1"]["dir"]
    files = sorted(p for p in shard_a.rglob("*") if p.is_file())
    assert any("data/c/" in p.as_posix() for p in files[1:])  # several value files
    on_read = by_verify = harmless_reads = 0
    silent = []
    cases = [(p, how) for p in [root / mf.MANIFEST, root / mf.GENE_ORDER, *files] for how in DAMAGES]
    for path, how in cases:
        rel = path.relative_to(root).as_posix()
        raw = _damage(path, how)
        _clear_caches(monkeypatch)
        try:
            got, error = None, None
            try:
                got = _read_all(root)
            except (DamagedDatasetError, ValueError, FileNotFoundError) as err:
                error = err
            if isinstance(error, DamagedDatasetError):
                assert "'A/1'" in str(error), (rel, how, error)
                assert "atlas.remove('A/1')" in str(error), (rel, how, error)
                on_read += 1
            elif error is not None:  # the atlas's own files: the error names the file
                assert path.parent == root, (rel, how, error)
                assert str(path) in str(error), (rel, how, error)
                on_read += 1
                continue
            if got is not None:
                if _same(got, expected):
                    harmless_reads += 1
                else:
                    silent.append((rel, how))
            _clear_caches(monkeypatch)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                reported = sg.Atlas.open(root).verify(progress=False)
            assert reported == ["A/1"], (rel, how, reported)
            assert any("atlas.remove('A/1')" in str(w.message) for w in caught), (rel, how)
            by_verify += 1
        finally:
            path.write_bytes(raw)
    assert silent == [], f"wrong values without an error: {silent}"
    print(
        f"{len(cases)} damages: {on_read} fail the read, {harmless_reads} leave the values read unchanged, all reported by verify"
    )
    # every damage of a shard file was found by verify; most already fail the read
    assert by_verify == len(cases) - 8
    assert on_read >= 0.8 * len(cases)
    _clear_caches(monkeypatch)
    assert sg.Atlas.open(root).verify(progress=False) == []  # every file restored


def test_damaged_dataset_is_repaired_by_remove_and_add(small_atlas, tmp_path, monkeypatch):
    root = tmp_path / "atlas"
    shutil.copytree(small_atlas, root)
    _clear_caches(monkeypatch)
    atlas = sg.Atlas.open(root)
    before = atlas.score(["G1", "G2"], datasets="B", progress=False)
    entry = next(s for s in mf.read_manifest(root)["shards"] if s["name"] == "A/1")
    (root / "shards" / entry["dir"] / "layers" / "attr_ig" / "data" / "c" / "1").unlink()
    with pytest.warns(UserWarning, match=r"'A/1' is damaged: file layers/attr_ig/data/c/1 is missing"):
        assert atlas.verify(progress=False) == ["A/1"]
    with pytest.raises(DamagedDatasetError, match=r"(?s)Dataset 'A/1'.*missing.*atlas\.remove\('A/1'\)"):
        atlas.score(GENES, progress=False)
    pd.testing.assert_frame_equal(atlas.score(["G1", "G2"], datasets="B", progress=False), before)  # others readable
    atlas.remove("A/1")
    assert atlas.datasets == ["B"]
    assert not (root / "shards" / entry["dir"]).exists()
    atlas.add(synthetic_adata(50, GENES, seed=1), name="A/1", progress=False)
    assert atlas.verify(progress=False) == []
    with pytest.raises(KeyError, match="no dataset named 'nope'"):
        atlas.remove("nope")


def test_missing_chunk_reads_as_error_not_zeros(small_atlas, tmp_path, monkeypatch):
    """tensorstore fills a missing chunk with the fill value (0); a sealed shard refuses instead.

    The frame check of the file finds it missing before tensorstore reads (for older seals, tensorstore's
    strict read refuses: ``test_integrity.py``)."""
    root = tmp_path / "atlas"
    shutil.copytree(small_atlas, root)
    _clear_caches(monkeypatch)
    manifest = mf.read_manifest(root)
    entry = next(s for s in manifest["shards"] if s["name"] == "A/1")
    layer = root / "shards" / entry["dir"] / "layers" / "attr_ig"
    (layer / "data" / "c" / "0").unlink()
    with pytest.raises(DamagedDatasetError, match="file layers/attr_ig/data/c/0 is missing"):
        sg.Atlas.open(root).score(GENES[:3], progress=False)


def test_damaged_json_names_file(small_atlas, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(small_atlas, root)
    for content, why in [(b"", "is empty"), (b'{"format": "scsig-at', "is not valid JSON"), (b"[1, 2]", "list")]:
        (root / mf.MANIFEST).write_bytes(content)
        with pytest.raises(ValueError, match=why) as err:
            sg.Atlas.open(root)
        assert str(root / mf.MANIFEST) in str(err.value)
        assert "JSONDecodeError" not in type(err.value).__name__


def test_atlas_written_before_checksums(small_atlas, tmp_path, monkeypatch):
    """Old manifests have no checksums: reads work, verify checks structure and says what it cannot check."""
    root = tmp_path / "atlas"
    shutil.copytree(small_atlas, root)
    _clear_caches(monkeypatch)
    manifest = mf.read_manifest(root)
    for s in manifest["shards"]:
        del s["checksums"]
    text = json.dumps(manifest, indent=1)  # no manifest checksum either, as before
    (root / mf.MANIFEST).write_text(text)
    atlas = sg.Atlas.open(root)
    assert len(atlas.score(GENES[:4], progress=False)) == 80
    with pytest.warns(UserWarning, match="added before scsig recorded checksums"):
        assert atlas.verify(progress=False) == []
    entry = next(s for s in manifest["shards"] if s["name"] == "A/1")
    layer = root / "shards" / entry["dir"] / "layers" / "attr_ig"
    (layer / "data" / "c" / "1").unlink()
    with pytest.warns(UserWarning, match=r"'A/1' is damaged: chunk file data/c/1 is missing"):
        assert atlas.verify(progress=False) == ["A/1"]
    _clear_caches(monkeypatch)
    with pytest.raises(DamagedDatasetError, match=r"chunk file data/c/1 is missing"):  # not zeros
        atlas.score(GENES, datasets="A/1", progress=False)
    assert len(atlas.score(GENES, datasets="B", progress=False)) == 30
    _damage(layer / "indptr" / "c" / "0", "flip")
    _clear_caches(monkeypatch)
    with pytest.raises(DamagedDatasetError, match="'A/1'"):
        atlas.score(GENES[:4], datasets="A/1", progress=False)


@pytest.mark.parametrize("name", ["a\nb", "x\x00", "   ", "", "\t", "tab\there", "line\u2028sep"])
def test_unsafe_dataset_names_are_refused(tmp_path, name):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=GENES)
    with pytest.raises(ValueError, match="(?i)whitespace|control characters"):
        atlas.add(synthetic_adata(5, GENES), name=name, progress=False)
    assert atlas.datasets == []
    assert list((tmp_path / "atlas" / "shards").iterdir()) == []


def test_slash_names_and_obs_columns_round_trip(tmp_path):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=GENES)
    adata = synthetic_adata(20, GENES, seed=4)
    adata.obs["donor/sample"] = pd.Categorical([f"d{i % 4}" for i in range(20)])
    adata.obs["pct%2F"] = np.arange(20)
    atlas.add(adata, name="study/2024/lung", progress=False)
    atlas.add(synthetic_adata(10, GENES, seed=5), name="plain", progress=False)
    reopened = sg.Atlas.open(tmp_path / "atlas")
    assert reopened.datasets == ["study/2024/lung", "plain"]
    obs = reopened.obs(datasets="study/2024/lung")
    assert [c for c in obs.columns if c != "dataset"] == ["cell_type", "sample", "depth", "donor/sample", "pct%2F"]
    pd.testing.assert_series_equal(obs["donor/sample"], adata.obs["donor/sample"], check_categorical=False)
    np.testing.assert_array_equal(obs["pct%2F"], np.arange(20))
    frame = reopened.score(GENES[:5], obs_filter={"donor/sample": "d1"}, mode="classic", progress=False)
    assert set(frame["dataset"]) == {"study/2024/lung"}
    mask = (adata.obs["donor/sample"] == "d1").to_numpy()
    expected = adata.layers["attr_ig"][:, :5].toarray().astype(np.float64).mean(axis=1)[mask]
    np.testing.assert_allclose(frame["score"].to_numpy(), expected, rtol=1e-6)
    out = reopened.to_anndata(GENES[:3], datasets="plain", progress=False)
    out.write_h5ad(tmp_path / "out.h5ad")
    import anndata as ad

    back = ad.read_h5ad(tmp_path / "out.h5ad")
    assert list(back.obs["dataset"].cat.categories) == ["plain"]
    assert back.uns["scsig"]["atlas"]["datasets"] == ["plain"]
    assert reopened.summary().index.tolist() == ["study/2024/lung", "plain"]
    assert reopened.verify(progress=False) == []


def test_dataset_name_types(tmp_path):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=GENES)
    with pytest.raises(TypeError, match="must be a string, not NoneType"):
        atlas.add(synthetic_adata(5, GENES), name=None, progress=False)
    atlas.add(synthetic_adata(5, GENES), name=7, progress=False)
    assert atlas.datasets == ["7"]
