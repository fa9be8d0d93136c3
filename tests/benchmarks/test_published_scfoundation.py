"""benchmarks/published_scfoundation.py gets scFoundation's published files over HTTP at pinned commits.

No internet is needed: a temporary folder is served on localhost in the layout of raw.githubusercontent.com
(``<repo>/<commit>/<path>``) and the script's ``fetch`` is pointed at it.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import socket
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "_published_scfoundation", ROOT / "benchmarks" / "published_scfoundation.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(folder served, URL template with {repo}, {commit}, {path})."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy set in the environment must not see these requests
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/{{repo}}/{{commit}}/{{path}}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_fetch_downloads_every_pinned_file_to_its_repository_path(bench, served, tmp_path):
    root, base = served
    for i, (path, commit) in enumerate(bench.FILES.items()):
        source = root / bench.REPO / commit / path
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(f"# file {i}: {path} at {commit}\n".encode())
    dest = tmp_path / "dest"
    written = bench.fetch(dest, base=base, timeout=5)
    assert set(written) == set(bench.FILES)
    for i, (path, commit) in enumerate(bench.FILES.items()):
        assert written[path] == dest / path
        assert (dest / path).read_text() == f"# file {i}: {path} at {commit}\n"
    assert {"model/load.py", "model/get_embedding.py", "model/pretrainmodels/select_model.py"} <= set(bench.FILES)
    assert all(len(commit) == 40 for commit in bench.FILES.values())


def test_fetch_names_the_url_and_source_on_a_404(bench, served, tmp_path):
    root, base = served
    (root / "owner" / "c1" / "a.py").parent.mkdir(parents=True)
    (root / "owner" / "c1" / "a.py").write_text("x = 1\n")
    with pytest.raises(RuntimeError, match=r"HTTP 404.*--source DIR") as info:
        bench.fetch(tmp_path / "dest", {"a.py": "c1", "model/missing.py": "c1"}, base=base, repo="owner", timeout=5)
    assert "/owner/c1/model/missing.py" in str(info.value)


def test_fetch_offline_points_to_source(bench, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on: the connection is refused, as offline
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RuntimeError, match=r"offline\?.*--source DIR"):
        bench.fetch(tmp_path / "dest", base=f"http://127.0.0.1:{port}/{{repo}}/{{commit}}/{{path}}", timeout=5)


def test_edits_stop_when_the_published_text_changed(bench, tmp_path):
    todo = bench.edits(400, float64=False)
    text = "return model.cuda(),config\nreturn model.cuda(),config\n"
    assert bench.apply_edits(text, "model/load.py", todo) == "return model,config\nreturn model,config\n"
    with pytest.raises(RuntimeError, match=r"expected 2 occurrence\(s\).*found 1"):
        bench.apply_edits("return model.cuda(),config\n", "model/load.py", todo)
    with pytest.raises(FileNotFoundError, match="--source"):
        bench.copy_source(tmp_path, tmp_path / "dest")
