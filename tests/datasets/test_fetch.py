from __future__ import annotations

import hashlib
import re

import pytest

import scsig as sg
from scsig.datasets import _fetch


def _serve(served, name: str, payload: bytes) -> str:
    (served / name).write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def test_fetch_url_downloads_verifies_and_caches(http_server, tmp_path):
    base, served, requests = http_server
    sha = _serve(served, "data.bin", b"scsig test payload\n" * 100)
    cache = tmp_path / "cache"
    path = sg.datasets.fetch(f"{base}/data.bin", known_hash=sha, cache_dir=cache, progress=False)
    assert path.parent == cache
    assert path.name == "data.bin"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert requests == ["/data.bin"]
    again = sg.datasets.fetch(f"{base}/data.bin", known_hash=f"sha256:{sha.upper()}", cache_dir=cache, progress=False)
    assert again == path
    assert requests == ["/data.bin"]  # served from the cache


def test_fetch_refuses_wrong_hash(http_server, tmp_path):
    base, served, _ = http_server
    _serve(served, "data.bin", b"the real bytes")
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="(?i)hash"):
        sg.datasets.fetch(f"{base}/data.bin", known_hash=wrong, cache_dir=cache, progress=False)
    assert not (cache / "data.bin").exists()


def test_fetch_failed_download_names_the_cache_path_and_a_placed_copy_is_used(http_server, tmp_path):
    base, _, requests = http_server
    payload = b"bytes the server does not have"
    sha = hashlib.sha256(payload).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(ConnectionError, match=re.escape(str(cache / "missing.bin"))):
        sg.datasets.fetch(f"{base}/missing.bin", known_hash=sha, cache_dir=cache, progress=False)  # HTTP 404
    assert not (cache / "missing.bin").exists()
    # the fix the message gives: a copy with the right hash at that path is used without a download
    (cache / "missing.bin").write_bytes(payload)
    n = len(requests)
    path = sg.datasets.fetch(f"{base}/missing.bin", known_hash=sha, cache_dir=cache, progress=False)
    assert path.read_bytes() == payload
    assert len(requests) == n


def test_fetch_redownloads_corrupted_cache(http_server, tmp_path):
    base, served, requests = http_server
    sha = _serve(served, "data.bin", b"payload")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data.bin").write_bytes(b"truncated")
    path = sg.datasets.fetch(f"{base}/data.bin", known_hash=sha, cache_dir=cache, progress=False)
    assert path.read_bytes() == b"payload"
    assert requests == ["/data.bin"]


def test_fetch_registered_name(http_server, tmp_path, monkeypatch):
    base, served, requests = http_server
    sha = _serve(served, "remote_name.tsv.gz", b"x\ty\n1\t2\n")
    entry = _fetch.RemoteFile("local-test", f"{base}/remote_name.tsv.gz", sha, 8, "test file", "computed in test")
    monkeypatch.setitem(_fetch.REGISTRY, "local-test", entry)
    monkeypatch.setenv(_fetch.CACHE_ENV, str(tmp_path / "envcache"))
    path = sg.datasets.fetch("local-test", progress=False)
    assert path == tmp_path / "envcache" / "local-test"
    assert path.read_bytes() == b"x\ty\n1\t2\n"
    assert "local-test" in sg.datasets.registry().index
    with pytest.raises(ValueError, match="differs from the registered"):
        sg.datasets.fetch("local-test", known_hash="0" * 64, progress=False)
    assert requests == ["/remote_name.tsv.gz"]


def test_fetch_argument_errors(tmp_path):
    with pytest.raises(KeyError, match="GSE96583_RAW.tar"):
        sg.datasets.fetch("no-such-file", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="known_hash"):
        sg.datasets.fetch("http://127.0.0.1:9/x.bin", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="64 hex"):
        sg.datasets.fetch("http://127.0.0.1:9/x.bin", known_hash="md5:abc", cache_dir=tmp_path)


def test_registry_entries_are_well_formed():
    frame = sg.datasets.registry()
    assert len(frame) >= 1
    for name, row in frame.iterrows():
        assert row["url"].startswith("https://"), name
        assert re.fullmatch(r"[0-9a-f]{64}", row["sha256"]), name
        assert row["size"] > 0
        assert row["url"].rsplit("/", 1)[-1] == name


@pytest.mark.parametrize("fname", ["../x", "../../etc/x", "sub/x", "..", "/tmp/abs_x", "a\\..\\x", ""])
def test_fetch_fname_stays_inside_the_cache(http_server, tmp_path, fname):
    base, served, requests = http_server
    sha = _serve(served, "data.bin", b"payload")
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ValueError, match="plain file name"):
        sg.datasets.fetch(f"{base}/data.bin", known_hash=sha, fname=fname, cache_dir=cache, progress=False)
    assert requests == []  # refused before any download
    written = [p for p in tmp_path.rglob("*") if p.is_file() and served not in p.parents]
    assert written == []
    path = sg.datasets.fetch(f"{base}/data.bin", known_hash=sha, fname="renamed.bin", cache_dir=cache, progress=False)
    assert path == cache / "renamed.bin"
