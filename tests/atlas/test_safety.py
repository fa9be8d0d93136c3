"""Writes stay inside the atlas folder, deletes touch only what scsig made, bad sources are never committed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import scsig as sg
from scsig.atlas import _staging

from .conftest import synthetic_adata


def _tree(path):
    """Every path under ``path`` (links not followed), with file contents."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for d in dirs:
            out[(Path(dirpath) / d).relative_to(path).as_posix()] = "dir"
        for f in files:
            out[(Path(dirpath) / f).relative_to(path).as_posix()] = (Path(dirpath) / f).read_bytes()
    return out


def _user_folder(path):
    """A folder of a user's own files and sub-folders."""
    (path / "project" / "raw").mkdir(parents=True)
    (path / "project" / "raw" / "counts.csv").write_text("gene,count\n")
    (path / "project" / "notes.txt").write_text("do not delete")
    (path / ("ab" * 16)).mkdir()  # even a folder named as scsig names its own
    (path / ("ab" * 16) / "keep.txt").write_text("mine")
    return _tree(path)


# ---------------------------------------------------------------------- names that become paths


@pytest.mark.parametrize("bad", ["{outside}", "../escape", "a/b", "..", ".", "__zarr", "x\ny", " "])
def test_layer_names_never_leave_the_atlas(tmp_path, genes, bad):
    outside = tmp_path / "outside"
    bad = bad.format(outside=outside)
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    adata = synthetic_adata(10, genes)
    adata.layers[bad] = adata.layers["attr_ig"]
    with pytest.raises(ValueError, match="cannot name an atlas layer"):
        atlas.add(adata, layer=bad, name="x")
    assert not outside.exists()
    assert not (tmp_path / "escape").exists()
    assert atlas.datasets == []
    assert list((atlas.path / "tmp").iterdir()) == []


def test_key_added_never_leaves_the_atlas(attributed_toy, tmp_path):
    adata, model = attributed_toy
    outside = tmp_path / "outside"
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    for bad in (str(outside), "../outside", "a/b"):
        with pytest.raises(ValueError, match="key_added name .* cannot name an atlas layer"):
            atlas.attribute(adata, model, names="x", key_added=bad, progress=False)
    assert not outside.exists()
    assert atlas.datasets == []


# ---------------------------------------------------------------------- links and clean-up


@pytest.mark.parametrize("sub", ["tmp", "shards"])
def test_a_linked_folder_is_refused_and_its_target_untouched(tmp_path, genes, sub):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    atlas.add(synthetic_adata(10, genes), name="first")
    target = tmp_path / "elsewhere"
    target.mkdir()
    before = _user_folder(target)
    link = atlas.path / sub
    if sub == "shards":  # keep the stored shard reachable through the link
        for child in link.iterdir():
            child.rename(target / child.name)
        before = _tree(target)
    link.rmdir()
    link.symlink_to(target, target_is_directory=True)
    reopened = sg.Atlas.open(atlas.path)  # opening (and reading) is fine; cleaning is skipped
    if sub == "shards":
        assert len(reopened.score(["G1"], progress=False)) == 10
    with pytest.raises(OSError, match="is a symbolic link"):
        reopened.add(synthetic_adata(5, genes, seed=1), name="second")
    with pytest.raises(OSError, match="is a symbolic link"):
        reopened.remove("first")
    assert _tree(target) == before
    assert reopened.datasets == ["first"]


def test_leftovers_of_dead_writers_are_cleaned_on_open(tmp_path, genes):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    atlas.add(synthetic_adata(10, genes), name="first")
    root = atlas.path
    leftovers = [root / ".manifest.json.4242.tmp", root / ".gene_order.txt.77.tmp"]
    for path in leftovers:
        path.write_text("half written")
    dead = root / "tmp" / ("c" * 32)
    dead.mkdir()
    (dead / _staging.BUILD_LOCK).touch()  # its writer died: the lock is free
    kept = [root / ".manifest.json.bak", root / "tmp" / "mine", root / "README"]
    kept[0].write_text("the user's copy")
    kept[1].mkdir()
    kept[2].write_text("notes")
    with _staging.staging(root) as live:  # a live writer's folder survives
        sg.Atlas.open(root)
        assert live.is_dir()
    assert not any(p.exists() for p in [*leftovers, dead])
    assert all(p.exists() for p in kept)
    assert sg.Atlas.open(root).datasets == ["first"]


def test_clean_up_never_follows_a_link_inside(tmp_path, genes):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    target = tmp_path / "elsewhere"
    target.mkdir()
    before = _user_folder(target)
    (atlas.path / "tmp" / ("e" * 32)).symlink_to(target, target_is_directory=True)
    (atlas.path / "shards" / ("f" * 32)).symlink_to(target, target_is_directory=True)
    atlas.add(synthetic_adata(10, genes), name="x")
    sg.Atlas.open(atlas.path)
    assert _tree(target) == before


# ---------------------------------------------------------------------- bad sources


def _h5ad(adata, path):
    adata.write_h5ad(path)
    return path


def _corrupt_indptr(path):
    with h5py.File(path, "r+") as fh:
        fh["X/indptr"][7] = fh["X/indptr"][-1] + 1000


def _flip_count(path):
    with h5py.File(path, "r+") as fh:
        data = fh["X/data"][:]
        data[3] ^= np.int32(1 << 25)  # one flipped bit in the high byte: a count of 33 million
        fh["X/data"][:] = data


def _truncate(path):
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size // 2)


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_corrupt_indptr, "index pointer"),
        (_flip_count, "above 16,777,216"),
        (_truncate, "cannot be read"),
        (_garbage, "cannot be read"),
    ],
)
def test_bad_sources_are_reported_by_name_never_committed(tmp_path, damage, message):
    adata, model = sg.datasets.toy()
    good = _h5ad(adata[:30].copy(), tmp_path / "good.h5ad")
    bad = _h5ad(adata[30:].copy(), tmp_path / "bad.h5ad")
    damage(bad)
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    with pytest.warns(UserWarning, match="1 of 2 datasets failed"):
        report = atlas.attribute([bad, good], model, on_error="warn", progress=False, n_steps=8)
    assert report["status"].tolist() == ["failed", "added"]
    assert message in report.loc["bad", "error"]
    assert "bad" in report.loc["bad", "error"]  # the source is named
    assert atlas.datasets == ["good"]
    _h5ad(adata[30:].copy(), bad)  # fixed: the rerun adds it
    report = atlas.attribute([bad, good], model, progress=False, n_steps=8)
    assert report["status"].tolist() == ["added", "skipped"]
    assert atlas.datasets == ["good", "bad"]
    assert atlas.verify(progress=False) == []


def test_in_memory_counts_refuse_an_impossible_count():
    adata, model = sg.datasets.toy()
    adata.X = adata.X.copy()
    adata.X.data[0] = 1 << 25
    with pytest.raises(ValueError, match="likely damaged"):
        sg.tl.attribute(adata, model, progress=False)
    assert "attr_ig" not in adata.layers


# ---------------------------------------------------------------------- concurrent writers


def test_two_writers_of_the_same_sources_end_with_one_complete_atlas(tmp_path):
    adata, model = sg.datasets.toy()
    paths = [_h5ad(adata[lo : lo + 15].copy(), tmp_path / f"d{lo}.h5ad") for lo in range(0, 60, 15)]
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    script = textwrap.dedent(
        f"""
        import sys, scsig as sg
        adata, model = sg.datasets.toy()
        report = sg.Atlas.open({str(atlas.path)!r}).attribute({[str(p) for p in paths]!r}, model, progress=False, n_steps=8)
        print(",".join(report["status"]))
        """
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
    statuses = [out.decode().strip().split(",") for out, _ in outs]
    assert all(set(s) <= {"added", "skipped"} for s in statuses)
    for k in range(4):  # each dataset added by exactly one writer
        assert sorted(s[k] for s in statuses) == ["added", "skipped"]
    assert atlas.datasets == [p.stem for p in paths]
    assert atlas.verify(progress=False) == []
    assert len(list((atlas.path / "shards").iterdir())) == 4


def test_a_claimed_dataset_waits_then_is_skipped(tmp_path, genes):
    from scsig.atlas._runs import SKIPPED, run_claimed

    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    ran = []

    def run(jobs, **_):
        ran.extend(j["name"] for j in jobs)
        return {j["name"]: {"n_obs": 1, "nnz": 1} for j in jobs}

    jobs = [{"name": "a"}, {"name": "b"}]
    with _staging.claim(atlas.path, "a", wait=False) as held:
        assert held
        with _staging.claim(atlas.path, "a", wait=False) as again:
            assert not again  # held by the other claim
        atlas.add(synthetic_adata(5, genes), name="a")  # the other writer finishes "a"
    results = run_claimed(run, atlas.path, jobs)
    assert results["a"] == SKIPPED
    assert ran == ["b"]


def test_atlas_warnings_name_the_dataset(tmp_path):
    adata, model = sg.datasets.toy()
    part = adata[:20].copy()
    x = part.X.tolil()
    x[3, :] = 0  # a cell without counts
    part.X = x.tocsr()
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    with pytest.warns(UserWarning, match=r"zero counts in the model's genes of dataset 'lung/1'"):
        atlas.attribute(part, model, names="lung/1", progress=False, n_steps=8)
