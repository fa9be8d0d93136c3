"""``benchmarks/published_bmfm.py`` gets the published files over HTTP: tested on a local server, no internet."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import sys
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


@pytest.fixture
def fake_source(bench, tmp_path):
    """Every MANIFEST file as a few lines of made-up code (the edits' texts where the edits expect them)."""
    root = tmp_path / "src"
    for path in bench.MANIFEST:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("X = 1\n")
    layers, layers_old = bench.SUBSTITUTIONS[0][:2]
    (root / layers).write_text(f"def f(self, input_ids, field, i):\n    {layers_old}    )\n")
    tokenizer, tokenizer_old = bench.SUBSTITUTIONS[1][:2]
    (root / tokenizer).write_text(f"def g(field_encodings):\n    return dict(\n        {tokenizer_old}\n    )\n")
    (root / "bmfm_targets/config/tokenization_config.py").write_text(
        "from dataclasses import dataclass\n\n\n@dataclass\nclass FieldInfo:\n    field_name: str\n"
    )
    (root / "bmfm_targets/config/model_config.py").write_text(
        "from bmfm_targets.config import FieldInfo\n"
        "from bmfm_targets.datasets.label_ontology import LabelOntology\n"
        "from clearml.logger import Logger\n"
        "Kept = FieldInfo\n"
    )
    return root


def test_import_hook_resolves_edits_and_stands_in(bench, fake_source):
    importer = bench.PublishedImporter(fake_source)
    importer.third_party = {"clearml"}  # as when it is not installed
    sys.meta_path.insert(0, importer)
    try:
        model_config = importlib.import_module("bmfm_targets.config.model_config")
        layers = importlib.import_module("bmfm_targets.models.predictive.layers")
        assert model_config.Kept.__module__ == "bmfm_targets.config.tokenization_config"
        assert model_config.Kept.datastore_config is None  # the printed compat default
        with pytest.raises(RuntimeError, match="stand-in"):
            model_config.LabelOntology()
        assert "LayerNorm" in layers.f.__code__.co_names
        assert "float" not in layers.f.__code__.co_names
        tokenizer = importlib.import_module("bmfm_targets.tokenization.multifield_tokenizer")
        assert "double" in tokenizer.g.__code__.co_names
        trainer = importlib.import_module("bmfm_targets.config").TrainerConfig()
        assert trainer.pooling_method == "pooling_layer"
    finally:
        sys.meta_path.remove(importer)
        for name in [m for m in sys.modules if m.split(".")[0] in {"bmfm_targets", "clearml"}]:
            del sys.modules[name]
    log = "\n".join(importer.log)
    assert "stand-in bmfm_targets.datasets.label_ontology.LabelOntology" in log
    assert "stand-in clearml.logger.Logger" in log
    assert "compat bmfm_targets.config.tokenization_config.FieldInfo.datastore_config = None" in log
    assert "edit bmfm_targets/models/predictive/layers.py" in log
    assert "edit bmfm_targets/tokenization/multifield_tokenizer.py" in log
