"""``benchmarks/published_bmfm.py`` gets the published files over HTTP: tested on a local server, no internet."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import threading
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "published_bmfm.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("published_bmfm", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A folder served on localhost as ``<commit>/<path>``, like raw.githubusercontent.com/<owner>/<repo>."""
    root = tmp_path / "served"
    files = {"c0ffee/bmfm_targets/config/model_config.py": "A = 1\n", "beef42/bmfm_targets/tokenization/load.py": "B\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_writes_each_file_at_its_path(bench, server, tmp_path):
    listed = {"bmfm_targets/config/model_config.py": "c0ffee", "bmfm_targets/tokenization/load.py": "beef42"}
    dest = tmp_path / "got"
    written = bench.fetch_published(dest, files=listed, base_url=server, timeout=5)
    assert written == [dest / p for p in listed]
    assert (dest / "bmfm_targets/config/model_config.py").read_text() == "A = 1\n"
    assert (dest / "bmfm_targets/tokenization/load.py").read_text() == "B\n"


def test_fetch_names_the_file_and_source_on_404(bench, server, tmp_path):
    listed = {"bmfm_targets/config/model_config.py": "0ther"}  # served under c0ffee only
    with pytest.raises(RuntimeError, match=r"HTTP 404.*model_config\.py is not at commit 0ther.*--source"):
        bench.fetch_published(tmp_path / "got", files=listed, base_url=server, timeout=5)


def test_fetch_without_network_names_source(bench, server, tmp_path):
    closed = server.rsplit(":", 1)[0] + ":9"  # the discard port: nothing listens on localhost
    with pytest.raises(RuntimeError, match=r"could not download .*--source DIR"):
        bench.fetch_published(tmp_path / "got", files={"a.py": "c0ffee"}, base_url=closed, timeout=5)


def test_manifest_pins_full_commits_and_source_check_names_missing_files(bench, tmp_path):
    assert all(len(c) == 40 and int(c, 16) >= 0 for c in bench.MANIFEST.values())
    assert all(path in bench.MANIFEST for path, *_ in bench.SUBSTITUTIONS)
    with pytest.raises(FileNotFoundError, match=rf"lacks {len(bench.MANIFEST)} published file\(s\).*layers\.py"):
        bench.check_source(tmp_path)


def test_edits_must_match_once(bench, tmp_path):
    path, old, new, _ = bench.SUBSTITUTIONS[1]
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(f"x = 1\n{old}\n")
    log: list[str] = []
    assert bench.edited_text(tmp_path, path, log) == f"x = 1\n{new}\n"
    assert len(log) == 1
    (tmp_path / path).write_text("changed upstream\n")
    with pytest.raises(RuntimeError, match="found 0 times.*update SUBSTITUTIONS"):
        bench.edited_text(tmp_path, path, log)
