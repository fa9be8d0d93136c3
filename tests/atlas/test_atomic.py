"""Atomic adds: a writer killed mid-add leaves the atlas intact; readers query while a writer adds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import scsig as sg

from .conftest import synthetic_adata

pytestmark = pytest.mark.skipif(os.name != "posix", reason="kills a subprocess with SIGKILL")

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np, pandas as pd
    from anndata import AnnData
    from scipy import sparse
    import scsig as sg
    from scsig.atlas import _build, _manifest, _store

    _store.SHARD = 64  # several writes, so that 'writing' pauses with a half-written shard
    _store.CHUNK = 16
    _store.BLOCK_NNZ = 200
    _build.BLOCK_NNZ = 200
    stage, flag = sys.argv[2], Path(sys.argv[3])

    def pause():
        flag.touch()
        go = flag.with_name(flag.name + ".continue")
        deadline = time.monotonic() + 120
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def pausing(func, *, after=False, once=True):
        done = []

        def wrapper(*args, **kwargs):
            if not after and not (once and done):
                done.append(1)
                pause()
            out = func(*args, **kwargs)
            if after and not (once and done):
                done.append(1)
                pause()
            return out

        return wrapper

    if stage == "writing":  # the first gene range of the shard is written
        _store._ColumnSink.add = pausing(_store._ColumnSink.add, after=True)
    elif stage == "written":  # the shard is complete, not yet renamed into shards/
        _build.seal = pausing(_build.seal)
    elif stage == "renamed":  # the shard is in shards/, the manifest not yet replaced
        _manifest.write_manifest = pausing(_manifest.write_manifest)
    atlas = sg.Atlas.open(sys.argv[1])
    genes = list(atlas.gene_order)
    rng = np.random.default_rng(7)
    x = sparse.random(80, len(genes), density=0.3, format="csr", dtype=np.float32, random_state=rng)
    adata = AnnData(obs=pd.DataFrame(index=[f"n{i}" for i in range(80)]), var=pd.DataFrame(index=genes))
    adata.layers["attr_ig"] = x
    atlas.add(adata, name="new", progress=False)
    """
)


def _start_writer(root, stage, flag):
    env = dict(os.environ, SCSIG_PROGRESS="0")
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), stage, str(flag)], env=env)


def _wait_for(flag, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            pytest.fail(f"the writer exited with {proc.returncode} before reaching the pause point")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the writer did not reach the pause point")
        time.sleep(0.02)


@pytest.fixture
def old_atlas(tmp_path, genes):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    atlas.add(synthetic_adata(30, genes, seed=1), name="old")
    return atlas


def test_killed_writer_leaves_atlas_intact(tmp_path, old_atlas, genes):
    stage = "writing"
    sig = ["G1", "G2", "G40"]
    before = old_atlas.score(sig)
    flag = tmp_path / "paused"
    proc = _start_writer(old_atlas.path, stage, flag)
    _wait_for(flag, proc)
    # the writer is in the middle of add: half a shard in tmp/
    assert len(list((old_atlas.path / "tmp").iterdir())) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    reopened = sg.Atlas.open(old_atlas.path)
    assert reopened.datasets == ["old"]
    after = reopened.score(sig)
    np.testing.assert_array_equal(after["score"], before["score"])
    # the next writer removes what the killed one left
    reopened.add(synthetic_adata(5, genes, seed=2), name="next")
    assert list((old_atlas.path / "tmp").iterdir()) == []
    listed = {s["dir"] for s in reopened._manifest["shards"]}
    assert {p.name for p in (old_atlas.path / "shards").iterdir()} == listed
    assert reopened.datasets == ["old", "next"]


def test_reader_queries_while_writer_adds(tmp_path, old_atlas):
    sig = ["G3", "G5"]
    reader = sg.Atlas.open(old_atlas.path)
    before = reader.score(sig)
    flag = tmp_path / "paused"
    proc = _start_writer(old_atlas.path, "renamed", flag)
    try:
        _wait_for(flag, proc)
        # the new shard's folder is in place but not listed: readers see the old atlas only
        during = reader.score(sig)
        assert reader.datasets == ["old"]
        np.testing.assert_array_equal(during["score"], before["score"])
        (tmp_path / "paused.continue").touch()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    after = reader.score(sig)  # the same reader object sees the new dataset
    assert reader.datasets == ["old", "new"]
    assert len(after) == 30 + 80
    np.testing.assert_array_equal(after.loc[before.index, "score"], before["score"])
    assert (after.loc[after["dataset"] == "new", "score"] >= 0).all()


def test_unlisted_shard_folders_are_invisible_and_cleaned(old_atlas, genes):
    # what a writer killed between the rename and the manifest update leaves: a complete, unlisted shard
    import shutil

    (listed,) = list((old_atlas.path / "shards").iterdir())
    dead = old_atlas.path / "shards" / ("deadbeef" * 4)  # named as scsig names its folders
    shutil.copytree(listed, dead)
    (old_atlas.path / "tmp" / ("a" * 32)).mkdir()
    (old_atlas.path / "shards" / "notes").mkdir()  # not a name scsig makes: never deleted
    reader = sg.Atlas.open(old_atlas.path)  # cleans what dead writers left
    assert not dead.exists()
    assert reader.datasets == ["old"]
    assert len(reader.score(["G1"])) == 30
    reader.add(synthetic_adata(5, genes, seed=2), name="next")
    assert list((old_atlas.path / "tmp").iterdir()) == []
    assert (old_atlas.path / "shards" / "notes").is_dir()
    assert len(reader.score(["G1"])) == 35
