"""Saving a model touches only its own files: user files survive, foreign folders are refused, writes are atomic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import scsig as sg
from scsig.models import CrossSpeciesModel, SCimilarityEncoder
from scsig.models._files import MANIFEST_FILE

from ..conftest import randomize_batchnorm

GENES = [f"G{i}" for i in range(10)]
MOUSE = [f"m{i}" for i in range(10)]


def _model(*, labels: bool = True, seed: int = 0) -> sg.models.FoundationModel:
    torch.manual_seed(seed)
    enc = SCimilarityEncoder(len(GENES), [12, 6], 4)
    randomize_batchnorm(enc, seed)
    return sg.models.FoundationModel(enc.eval(), GENES, name=f"tiny{seed}", labels={0: "a", 1: "b"} if labels else None)


def _cross(model: sg.models.FoundationModel) -> CrossSpeciesModel:
    return sg.models.cross_species(model, species="mouse", orthologs=pd.DataFrame({"mouse": MOUSE, "human": GENES}))


def _save_ckpt(model, folder, **kw):
    model.save(folder, **kw)


def _save_st(model, folder, **kw):
    sg.models.save_safetensors(model, folder, **kw)


def _save_cross(model, folder, **kw):
    _cross(model).save(folder, **kw)


SAVES = {"ckpt": _save_ckpt, "safetensors": _save_st, "cross_species": _save_cross}


def _cells(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((5, len(GENES))).astype(np.float32)


def _embedding(model: sg.models.FoundationModel) -> np.ndarray:
    return model.embed(_cells())


def _expected(save: str, model: sg.models.FoundationModel) -> np.ndarray:
    return _embedding(_cross(model) if save == "cross_species" else model)


def _user_files(folder: Path) -> dict[str, bytes]:
    """Put a user's files (one nested) into ``folder``; return their contents."""
    (folder / "notes").mkdir(parents=True, exist_ok=True)
    files = {"README.md": b"my notes\n", "notes/run.txt": b"run 1\n", "gene_order.tsv.bak": b"keep\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _assert_kept(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name


def _no_temporaries(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not left, left


@pytest.mark.parametrize("save", SAVES)
def test_foreign_folder_refused_and_untouched(tmp_path, save):
    folder = tmp_path / "m"
    files = _user_files(folder)
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        SAVES[save](_model(), folder)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before
    _assert_kept(folder, files)


@pytest.mark.parametrize("save", SAVES)
def test_overwrite_keeps_user_files_and_loads_identically(tmp_path, save):
    folder = tmp_path / "m"
    files = _user_files(folder)
    (folder / "gene_order.tsv").write_text("not a model's\n")  # a name the save writes: replaced
    model = _model()
    SAVES[save](model, folder, overwrite=True)
    _assert_kept(folder, files)
    _no_temporaries(folder)
    np.testing.assert_array_equal(_embedding(sg.models.load(folder)), _expected(save, model))
    # saving again: the folder is no longer only ours, so overwrite is needed again; user files stay
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        SAVES[save](model, folder)
    SAVES[save](_model(seed=1), folder, overwrite=True)
    _assert_kept(folder, files)
    np.testing.assert_array_equal(_embedding(sg.models.load(folder)), _expected(save, _model(seed=1)))


@pytest.mark.parametrize("save", SAVES)
def test_own_save_replaced_without_overwrite_stale_files_removed(tmp_path, save):
    folder = tmp_path / "m"
    SAVES[save](_model(labels=True), folder)
    assert (folder / "label_ints.csv").is_file()
    record = json.loads((folder / MANIFEST_FILE).read_text())
    assert "label_ints.csv" in record["files"]
    SAVES[save](_model(labels=False, seed=1), folder)  # exactly an earlier save of ours: no overwrite needed
    assert not (folder / "label_ints.csv").exists()  # listed by our own record, no longer written
    loaded = sg.models.load(folder)
    assert loaded.labels is None
    np.testing.assert_array_equal(_embedding(loaded), _expected(save, _model(labels=False, seed=1)))
    _no_temporaries(folder)


def test_changed_own_file_makes_folder_foreign_and_is_not_removed(tmp_path):
    folder = tmp_path / "m"
    sg.models.save_safetensors(_model(labels=True), folder)
    (folder / "label_ints.csv").write_text(",0\n0,mine\n")  # edited by the user since
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        sg.models.save_safetensors(_model(labels=False), folder)
    with pytest.warns(UserWarning, match="label_ints.csv"):
        sg.models.save_safetensors(_model(labels=False), folder, overwrite=True)
    assert (folder / "label_ints.csv").read_text() == ",0\n0,mine\n"


def test_other_kind_of_save_needs_overwrite_and_removes_only_its_record(tmp_path):
    folder = tmp_path / "m"
    _save_cross(_model(), folder)
    files = _user_files(folder)
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        sg.models.save_safetensors(_model(), folder)
    sg.models.save_safetensors(_model(seed=2), folder, overwrite=True)
    # the cross-species files of the earlier save are gone (it listed them), so the folder is a plain model
    assert not (folder / "cross_species.json").exists()
    assert not (folder / "base").exists()
    loaded = sg.models.load(folder)
    assert not isinstance(loaded, CrossSpeciesModel)
    np.testing.assert_array_equal(_embedding(loaded), _embedding(_model(seed=2)))
    _assert_kept(folder, files)


def test_empty_existing_folder_is_fine(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    _save_ckpt(_model(), folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "encoder.ckpt",
        "gene_order.tsv",
        "label_ints.csv",
        "layer_sizes.json",
        MANIFEST_FILE,
    ]


@pytest.mark.parametrize("save", SAVES)
def test_symlinks_in_folder_are_not_followed(tmp_path, save):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_text("secret\n")
    (outside / "sub" / "deep.txt").write_text("deep\n")
    folder = tmp_path / "m"
    SAVES[save](_model(), folder)
    (folder / "link_dir").symlink_to(outside, target_is_directory=True)
    (folder / "link_file").symlink_to(outside / "secret.txt")
    # a record that names files through the link and outside the folder must not delete them
    record = json.loads((folder / MANIFEST_FILE).read_text())
    info = {"size": 7, "sha256": record["files"]["gene_order.tsv"]["sha256"]}
    record["files"].update({"link_dir/secret.txt": info, "link_file": info})
    (folder / MANIFEST_FILE).write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="no longer the files it wrote"):
        SAVES[save](_model(seed=1), folder, overwrite=True)
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert (outside / "sub" / "deep.txt").read_text() == "deep\n"
    assert (folder / "link_dir").is_symlink()
    assert (folder / "link_file").is_symlink()
    np.testing.assert_array_equal(_embedding(sg.models.load(folder)), _expected(save, _model(seed=1)))


def test_record_naming_paths_outside_is_ignored(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    folder = tmp_path / "m"
    sg.models.save_safetensors(_model(), folder)
    record = json.loads((folder / MANIFEST_FILE).read_text())
    record["files"]["../victim.txt"] = {"size": 5, "sha256": "x"}
    (folder / MANIFEST_FILE).write_text(json.dumps(record))
    with pytest.raises(FileExistsError, match=r"overwrite=True"):  # not a record of ours any more
        sg.models.save_safetensors(_model(), folder)
    sg.models.save_safetensors(_model(), folder, overwrite=True)
    assert victim.read_text() == "keep\n"


def test_symlinked_file_with_a_name_the_save_writes_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "genes.txt"
    outside.write_text("mine\n")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "gene_order.tsv").symlink_to(outside)
    sg.models.save_safetensors(_model(), folder, overwrite=True)
    assert outside.read_text() == "mine\n"
    assert not (folder / "gene_order.tsv").is_symlink()
    assert sg.models.load(folder).gene_order == GENES


def test_cross_species_refuses_base_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "encoder.safetensors").write_bytes(b"user data")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "base").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FileExistsError, match="symbolic link"):
        _save_cross(_model(), folder, overwrite=True)
    assert (outside / "encoder.safetensors").read_bytes() == b"user data"
    assert sorted(p.name for p in outside.iterdir()) == ["encoder.safetensors"]
    _no_temporaries(folder)


def test_folder_given_as_link_refused_when_foreign(tmp_path):
    real = tmp_path / "real"
    files = _user_files(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        sg.models.save_safetensors(_model(), link)
    sg.models.save_safetensors(_model(), link, overwrite=True)
    _assert_kept(real, files)
    assert link.is_symlink()


@pytest.mark.parametrize("save", SAVES)
def test_failure_while_writing_leaves_no_trace(tmp_path, save, monkeypatch):
    import scsig.models._scimilarity as scim

    def boom(*args, **kwargs):
        msg = "disk full"
        raise OSError(msg)

    monkeypatch.setattr(scim, "stage_model_files", boom)
    new = tmp_path / "new" / "m"
    with pytest.raises(OSError, match="disk full"):
        SAVES[save](_model(), new)
    assert not (tmp_path / "new").exists()  # the folders this save made are removed again
    monkeypatch.undo()

    folder = tmp_path / "m"
    SAVES[save](_model(), folder)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    monkeypatch.setattr(scim, "stage_model_files", boom)
    with pytest.raises(OSError, match="disk full"):
        SAVES[save](_model(seed=1), folder)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before  # the earlier save is intact
    _no_temporaries(folder)


@pytest.mark.parametrize("save", SAVES)
def test_interrupted_move_leaves_no_model_that_loads(tmp_path, save, monkeypatch):
    folder = tmp_path / "m"
    SAVES[save](_model(), folder)
    real_replace = Path.replace

    def interrupted(self, target):
        if Path(target).name == "encoder.safetensors" or Path(target).name == "encoder.ckpt":
            msg = "interrupted"
            raise KeyboardInterrupt(msg)
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        SAVES[save](_model(seed=1), folder)
    monkeypatch.undo()
    _no_temporaries(folder)
    with pytest.raises((FileNotFoundError, OSError, ValueError)):
        sg.models.load(folder)
    # the leftovers are the earlier save's record plus new files: a plain save needs overwrite=True
    SAVES[save](_model(seed=1), folder, overwrite=True)
    np.testing.assert_array_equal(_embedding(sg.models.load(folder)), _expected(save, _model(seed=1)))


def test_manifest_lists_every_file_written(tmp_path):
    folder = tmp_path / "m"
    _save_cross(_model(), folder)
    record = json.loads((folder / MANIFEST_FILE).read_text())
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted([*record["files"], MANIFEST_FILE]) == written
    assert record["kind"] == "cross-species"
    for name, info in record["files"].items():
        assert (folder / name).stat().st_size == info["size"]


@pytest.mark.parametrize("text", ["[1, 2]", "not json", '{"format": "other", "files": {}}', '{"format": 1}'])
def test_a_manifest_scsig_did_not_write_makes_the_folder_foreign(tmp_path, text):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text(text)
    with pytest.raises(FileExistsError, match=r"overwrite=True"):
        sg.models.save_safetensors(_model(), folder)
    sg.models.save_safetensors(_model(), folder, overwrite=True)
    assert json.loads((folder / MANIFEST_FILE).read_text())["kind"] == "scimilarity-safetensors"


def test_only_scimilarity_encoders_save_and_nothing_is_written_otherwise(tmp_path):
    other = sg.models.from_module(torch.nn.Linear(len(GENES), 3), GENES)
    for save in (lambda f: other.save(f), lambda f: sg.models.save_safetensors(other, f)):
        with pytest.raises(TypeError, match="SCimilarityEncoder"):
            save(tmp_path / "x")
        assert not (tmp_path / "x").exists()


def test_a_killed_save_leaves_nothing_the_next_save_trips_on(tmp_path):
    import scsig as sg
    from scsig.models._files import STAGING_LOCK, STAGING_PREFIX, SaveFolder

    _, model = sg.datasets.toy()
    folder = tmp_path / "model"
    model.save(folder)
    dead = folder / f"{STAGING_PREFIX}dead1234"  # what a save killed while writing leaves
    dead.mkdir()
    (dead / STAGING_LOCK).touch()
    (dead / "encoder.ckpt.tmp").write_bytes(b"half")
    model.save(folder)  # no overwrite needed: the leftover is recognised and removed
    assert not dead.exists()
    mine = folder / f"{STAGING_PREFIX}notes123"  # named like ours, but holds a file that is not a temporary one
    mine.mkdir()
    (mine / STAGING_LOCK).touch()
    (mine / "notes.txt").write_text("mine")
    with SaveFolder(folder, kind="x", what="model", overwrite=True) as live:  # a save still running
        live.path("other.bin").write_bytes(b"1")
        staging = [p for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX) and p != mine]
        model.save(folder, overwrite=True)
        assert all(p.is_dir() for p in staging)  # the live save's folder is left alone
    assert (mine / "notes.txt").read_text() == "mine"
