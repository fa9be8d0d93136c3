"""Checksums that see the content: files from another build, swapped files and re-framed chunks are refused.

The bulk files of a shard (values and row indices) are zarr v3 shard files of crc32c-framed chunks.
The crc32c of such a whole file depends only on its chunk lengths, so seals hash files with sha256,
and reads check each bulk file's frame (chunk index + chunk crc32c trailers) against the seal.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

import scsig as sg
from scsig.atlas import _integrity, _query, _store
from scsig.atlas import _manifest as mf
from scsig.atlas._checks import DamagedDatasetError

from .conftest import synthetic_adata

GENES = [f"G{i}" for i in range(40)]
LAYER = "attr_ig"
EMPTY = (1 << 64) - 1


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """``(atlas, other)``: datasets 'A' and 'B' (same shape, other values), and a second build of 'A' (other values)."""
    base = tmp_path_factory.mktemp("integrity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_store, "CHUNK", 16)
        mp.setattr(_store, "SHARD", 64)
        atlas = sg.Atlas.create(base / "atlas", gene_order=GENES)
        atlas.add(synthetic_adata(50, GENES, seed=1), name="A", progress=False)
        atlas.add(synthetic_adata(50, GENES, seed=2, prefix="b"), name="B", progress=False)
        other = sg.Atlas.create(base / "other", gene_order=GENES)
        other.add(synthetic_adata(50, GENES, seed=3), name="A", progress=False)
    return base / "atlas", base / "other"


@pytest.fixture
def fresh(builds, tmp_path, monkeypatch):
    """A copy of both atlases and empty reader caches."""
    atlas, other = builds
    shutil.copytree(atlas, tmp_path / "atlas")
    shutil.copytree(other, tmp_path / "other")
    _clear_caches(monkeypatch)
    return tmp_path / "atlas", tmp_path / "other"


def _clear_caches(monkeypatch):
    monkeypatch.setattr(_query, "_READERS", type(_query._READERS)())
    monkeypatch.setattr(_query, "_OBS", type(_query._OBS)())
    monkeypatch.setattr(_query, "_CHECKED", set())


def _layer(root, name):
    entry = next(s for s in mf.read_manifest(root)["shards"] if s["name"] == name)
    return root / "shards" / entry["dir"] / "layers" / LAYER


def _shard(root, name):
    return _layer(root, name).parent.parent


def _verify(root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reported = sg.Atlas.open(root).verify(progress=False)
    return reported, [str(w.message) for w in caught]


def _assert_reads_refused(root, name, monkeypatch):
    for read in (
        lambda a: a.score(GENES, datasets=name, progress=False),
        lambda a: a.to_anndata(datasets=name, progress=False),
    ):
        _clear_caches(monkeypatch)
        with pytest.raises(DamagedDatasetError, match=rf"(?s)Dataset '{name}'.*atlas\.remove\('{name}'\)"):
            read(sg.Atlas.open(root))


def _index(raw, n_chunks):
    """``[(offset, length)]`` of a shard file's chunks, from its index at the end of the file."""
    entries = np.frombuffer(raw[-(16 * n_chunks + 4) : -4], dtype="<u8").reshape(-1, 2)
    return [(int(o), int(n)) for o, n in entries]


def test_zarr_shard_layout_is_understood(fresh):
    """The layout the frame check relies on, read from zarr.json and the bytes of this repo's files."""
    google_crc32c = pytest.importorskip("google_crc32c")
    numcodecs = pytest.importorskip("numcodecs")
    import tensorstore as ts

    layer = _layer(fresh[0], "A")
    for array, dtype in [("data", "<f4"), ("indices", "<i4")]:
        meta = json.loads((layer / array / "zarr.json").read_text())
        assert _integrity.shard_layout(meta) == (64, 4)  # values per file, chunks per file
        values = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(layer / array)}}).result()
        values = np.asarray(values.read().result())
        n_files = -(-values.size // 64)
        assert sorted(p.name for p in (layer / array / "c").iterdir()) == sorted(str(k) for k in range(n_files))
        for k in range(n_files):
            raw = (layer / array / "c" / str(k)).read_bytes()
            # the index is the last 4 x 16 bytes + its own crc32c, little endian
            assert raw[-4:] == google_crc32c.value(raw[-68:-4]).to_bytes(4, "little")
            end = 0
            for j, (offset, length) in enumerate(_index(raw, 4)):
                lo = k * 64 + j * 16
                if lo >= values.size:  # past the end of the array: not stored
                    assert (offset, length) == (EMPTY, EMPTY)
                    continue
                assert offset == end  # chunks stored back to back from the start of the file
                end = offset + length
                chunk = raw[offset:end]
                # each chunk: blosc(bytes little endian) + crc32c of that, little endian
                assert chunk[-4:] == google_crc32c.value(chunk[:-4]).to_bytes(4, "little")
                decoded = np.frombuffer(numcodecs.Blosc().decode(chunk[:-4]), dtype=dtype)
                hi = min(lo + 16, values.size)
                np.testing.assert_array_equal(decoded[: hi - lo], values[lo:hi])
            assert end == len(raw) - 68


def test_crc32c_of_a_whole_shard_file_does_not_see_its_content(fresh):
    """Why seals no longer use crc32c: two builds' value files differ but have the same whole-file crc32c."""
    pytest.importorskip("google_crc32c")
    mine, theirs = (_layer(root, "A") / "data" / "c" / "1" for root in fresh)
    assert mine.read_bytes() != theirs.read_bytes()
    assert mine.stat().st_size == theirs.stat().st_size
    assert _integrity.file_checksum(mine, "crc32c") == _integrity.file_checksum(theirs, "crc32c")
    assert _integrity.file_checksum(mine, "sha256") != _integrity.file_checksum(theirs, "sha256")
    assert _integrity.file_checksum(mine, "crc32") != _integrity.file_checksum(theirs, "crc32")  # zlib's polynomial
    listing = json.loads((_shard(fresh[0], "A") / _integrity.CHECKSUMS).read_text())
    assert listing["algorithm"] == "sha256"
    assert listing["frame_scheme"] == _integrity.FRAMES
    rels = {f"layers/{LAYER}/{a}/c/{k}" for a in ("data", "indices") for k in range(10)}
    assert set(listing["frames"]) == rels  # every value and row-index file, nothing else
    record = next(s for s in mf.read_manifest(fresh[0])["shards"] if s["name"] == "A")["checksums"]
    assert record["algorithm"] == "sha256"
    assert len(record["checksum"]) == 64


@pytest.mark.parametrize("array", ["data", "indices"])
def test_file_from_another_build_is_refused(fresh, monkeypatch, array):
    root, other = fresh
    expected_b = sg.Atlas.open(root).score(GENES, datasets="B", progress=False)
    target = _layer(root, "A") / array / "c" / "2"
    shutil.copyfile(_layer(other, "A") / array / "c" / "2", target)
    reported, messages = _verify(root)
    assert reported == ["A"]
    assert any(f"'A' is damaged: file layers/{LAYER}/{array}/c/2" in m for m in messages), messages
    _assert_reads_refused(root, "A", monkeypatch)
    with pytest.raises(DamagedDatasetError, match=rf"file layers/{LAYER}/{array}/c/2 changed"):
        sg.Atlas.open(root).score(GENES, progress=False)
    _clear_caches(monkeypatch)
    got = sg.Atlas.open(root).score(GENES, datasets="B", progress=False)
    np.testing.assert_array_equal(got["score"], expected_b["score"])  # the other dataset reads as before


def _reframe(path, chunk):
    """Flip a byte inside ``chunk``'s compressed values and recompute its crc32c trailer."""
    google_crc32c = pytest.importorskip("google_crc32c")
    raw = bytearray(path.read_bytes())
    offset, length = _index(bytes(raw), 4)[chunk]
    where = offset + length - 4 - 9  # in the last values of the chunk (blosc stores them uncompressed here)
    raw[where] ^= 0x40
    raw[offset + length - 4 : offset + length] = google_crc32c.value(bytes(raw[offset : offset + length - 4])).to_bytes(
        4, "little"
    )
    path.write_bytes(bytes(raw))


def test_flipped_byte_with_recomputed_framing_is_refused(fresh, monkeypatch):
    import tensorstore as ts

    root, _ = fresh
    layer = _layer(root, "A")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(layer / "data")}}
    before = np.asarray(ts.open(spec).result().read().result())
    _reframe(layer / "data" / "c" / "1", chunk=2)
    after = np.asarray(ts.open(spec).result().read().result())  # tensorstore's own check passes: a wrong value
    changed = np.flatnonzero(before != after)
    assert changed.size == 1
    assert 64 + 2 * 16 <= changed[0] < 64 + 3 * 16
    reported, messages = _verify(root)
    assert reported == ["A"]
    assert any(f"file layers/{LAYER}/data/c/1 changed" in m for m in messages), messages
    _assert_reads_refused(root, "A", monkeypatch)


def test_files_swapped_between_datasets_are_refused(fresh, monkeypatch):
    root, _ = fresh
    a, b = (_layer(root, n) / "data" / "c" / "3" for n in ("A", "B"))
    assert a.stat().st_size == b.stat().st_size
    raw_a = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(raw_a)
    reported, messages = _verify(root)
    assert reported == ["A", "B"]
    _assert_reads_refused(root, "A", monkeypatch)
    _assert_reads_refused(root, "B", monkeypatch)


def test_each_bulk_file_is_framed_once_and_only_when_read(fresh, monkeypatch):
    root, _ = fresh
    checked = []
    original = _integrity.check_frames

    def counting(folder, rels, *args):
        checked.extend(rels)
        return original(folder, rels, *args)

    monkeypatch.setattr(_integrity, "check_frames", counting)
    atlas = sg.Atlas.open(root)
    atlas.score(GENES[:1], datasets="A", progress=False)  # gene 0: the first values only
    assert checked == [f"layers/{LAYER}/data/c/0", f"layers/{LAYER}/indices/c/0"]
    atlas.score(GENES, datasets="A", progress=False)
    atlas.score(GENES, datasets="A", progress=False)
    assert sorted(checked) == sorted(f"layers/{LAYER}/{a}/c/{k}" for a in ("data", "indices") for k in range(10))


def _old_seal(root, name, algorithm):
    """Rewrite a dataset's seal as scsig wrote it before content hashes: whole-file crc32c (or crc32), no frames."""
    shard = _shard(root, name)
    files = {
        rel: [(shard / rel).stat().st_size, _integrity.file_checksum(shard / rel, algorithm)]
        for rel in _integrity.stored_files(shard)
    }
    text = json.dumps({"algorithm": algorithm, "files": files}, indent=0, sort_keys=True)
    (shard / _integrity.CHECKSUMS).write_text(text)
    manifest = mf.read_manifest(root)
    for entry in manifest["shards"]:
        if entry["name"] == name:
            entry["checksums"] = {
                "file": _integrity.CHECKSUMS,
                "algorithm": algorithm,
                "checksum": _integrity.bytes_checksum(text.encode(), algorithm),
                "n_files": len(files),
                "bytes": sum(size for size, _ in files.values()),
            }
    mf.write_manifest(root, manifest)


@pytest.mark.parametrize("algorithm", ["crc32c", "crc32"])
def test_old_seals_still_open_and_verify(fresh, monkeypatch, algorithm):
    pytest.importorskip("google_crc32c")
    root, other = fresh
    expected = sg.Atlas.open(root).score(GENES, progress=False)
    _old_seal(root, "A", algorithm)
    _clear_caches(monkeypatch)
    atlas = sg.Atlas.open(root)
    np.testing.assert_array_equal(atlas.score(GENES, progress=False)["score"], expected["score"])
    reported, messages = _verify(root)
    assert reported == []
    (warning,) = messages
    assert "['A']" in warning
    assert "Remove and re-add" in warning
    assert ("cannot see the content" in warning) == (algorithm == "crc32c")
    # a file from another build: crc32c seals cannot see it (what the warning says), crc32 seals can
    shutil.copyfile(_layer(other, "A") / "data" / "c" / "2", _layer(root, "A") / "data" / "c" / "2")
    reported, _ = _verify(root)
    assert reported == ([] if algorithm == "crc32c" else ["A"])
    # a flipped bit in a chunk still fails the read (tensorstore's per-chunk crc32c), a missing chunk is no zeros
    raw = (_layer(root, "A") / "data" / "c" / "1").read_bytes()
    (_layer(root, "A") / "data" / "c" / "1").write_bytes(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:])
    _assert_reads_refused(root, "A", monkeypatch)
    (_layer(root, "A") / "data" / "c" / "1").unlink()
    _clear_caches(monkeypatch)
    with pytest.raises(DamagedDatasetError, match="'A'.*reading its attributions fails"):
        sg.Atlas.open(root).score(GENES, datasets="A", progress=False)
