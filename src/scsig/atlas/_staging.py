"""Writing into an atlas safely: staging folders, the commit, claims, and cleaning what dead writers left.

Every dataset goes the same way, whoever writes it (``add``, ``attribute``, a TileDB import, a
worker of a dask cluster):

1. :func:`staging` makes a private folder ``tmp/<id>/`` (``<id>``: 32 hex digits) holding a build
   lock (an OS file lock, released by the OS when the writer dies), so several writers can build at
   once and a cleaner can tell a live build from a dead one's leftovers.
2. A build writes the shard into ``tmp/<id>/shard`` (scratch files go to ``tmp/<id>/scratch``).
3. :func:`commit`, under the atlas's writer lock, checks the name is still free, renames the shard
   into ``shards/<id>`` and replaces the manifest: a dataset becomes visible all at once, or not at all.

What may be deleted is decided by names, never by following links: :func:`clean_leftovers` removes
only real folders (not links) under ``tmp/`` and ``shards/`` whose names scsig makes (32 hex digits,
or a dot and 32 hex digits while a staging folder is set up) and the temporary files of an
interrupted manifest or gene-order write. An atlas whose ``tmp/`` or ``shards/`` is a symbolic link
is refused for writing (:func:`check_layout`): writes and clean-ups stay inside the atlas folder.

A *claim* (:func:`claim`) is an OS lock on ``.claims/<hash of the name>``: a writer that attributes a
dataset holds it, so a second writer of the same dataset waits for the first instead of doing the work
twice, then skips the dataset if the first added it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._utils._locks import try_lock
from . import _manifest as mf

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "BUILD_LOCK",
    "NameTakenError",
    "check_layout",
    "claim",
    "clean_leftovers",
    "clean_on_open",
    "commit",
    "now",
    "remove_tree",
    "staging",
]

BUILD_LOCK = ".building"
"""File in a staging folder that its writer holds an OS lock on while it builds."""

CLAIMS = ".claims"
"""Folder of the atlas with one lock file per dataset name being attributed."""

STALE_SECONDS = 3600
"""A hidden (still being set up) staging folder older than this is a dead writer's leftover."""

_OWN_FOLDER = re.compile(r"\.?[0-9a-f]{32}")
"""Names of the folders scsig creates under ``tmp/`` and ``shards/`` (a uuid4's hex, dotted while hidden)."""

_OWN_TEMP_FILE = re.compile(r"\.(" + re.escape(mf.MANIFEST) + "|" + re.escape(mf.GENE_ORDER) + r")\.\d+\.tmp")
"""Temporary files of :func:`scsig.atlas._manifest.atomic_write_text` in the atlas folder."""


class NameTakenError(ValueError):
    """The atlas already lists a dataset of this name (another writer may have added it meanwhile)."""


def now() -> str:
    """The current UTC time, as recorded in the manifest."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def remove_tree(path: Path) -> None:
    """Delete the folder ``path`` (never a link's target); a missing folder is fine."""
    if path.is_symlink():
        path.unlink()
        return
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- layout


def check_layout(root: Path) -> None:
    """Refuse to write into an atlas whose ``tmp/`` or ``shards/`` is a symbolic link or not a folder.

    Writers create and delete folders there; following a link would put (or remove) them outside the atlas.
    """
    for sub in (mf.TMP, mf.SHARDS):
        path = root / sub
        if path.is_symlink():
            msg = (
                f"The atlas folder {path} is a symbolic link (to {path.readlink()}); scsig writes and cleans up only "
                f"inside the atlas and does not follow it. Replace the link with a real folder named {sub!r} "
                "(move the atlas itself if it needs another disk)."
            )
            raise OSError(msg)
        if path.exists() and not path.is_dir():
            msg = f"{path} is not a folder; the atlas at {root} is damaged (restore it from a copy)."
            raise OSError(msg)
        path.mkdir(exist_ok=True)


def _own_folders(folder: Path) -> Iterator[Path]:
    """Real sub-folders of ``folder`` that scsig created (by name), never through a link."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if _OWN_FOLDER.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                yield Path(entry.path)


# ---------------------------------------------------------------------- staging and commit


@contextlib.contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A private, locked build folder ``tmp/<id>/``; removed on exit (its shard, once committed, has moved)."""
    check_layout(root)
    tmp_root = root / mf.TMP
    uid = uuid.uuid4().hex
    hidden = tmp_root / f".{uid}"
    hidden.mkdir()
    fh = (hidden / BUILD_LOCK).open("a+b")
    release = try_lock(fh)
    folder = tmp_root / uid
    try:
        hidden.rename(folder)  # appears under its final name with the lock already held
        yield folder
    finally:
        remove_tree(folder)
        remove_tree(hidden)
        if release is not None:
            release()
        fh.close()


def _is_live_build(folder: Path) -> bool:
    if folder.name.startswith("."):
        return time.time() - folder.stat().st_mtime < STALE_SECONDS
    lock = folder / BUILD_LOCK
    if lock.is_symlink() or not lock.is_file():
        return False
    with lock.open("a+b") as fh:
        release = try_lock(fh)
        if release is None:
            return True
        release()
    return False


def clean_leftovers(root: Path, manifest: Mapping) -> None:
    """Remove what dead writers left: unlisted shard folders, staging folders nobody builds in, temporary files.

    Call with the writer lock held (no shard is renamed into ``shards/`` and no manifest is written
    without it). Only entries scsig names are touched (see the module's docstring).
    """
    check_layout(root)
    listed = {s["dir"] for s in manifest["shards"]}
    for child in _own_folders(root / mf.TMP):
        with contextlib.suppress(FileNotFoundError):  # a live writer may finish meanwhile
            if not _is_live_build(child):
                remove_tree(child)
    for child in _own_folders(root / mf.SHARDS):
        if child.name not in listed:
            remove_tree(child)
    with os.scandir(root) as entries:
        for entry in entries:
            if _OWN_TEMP_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    Path(entry.path).unlink()


def clean_on_open(root: Path) -> None:
    """Clean dead writers' leftovers when the atlas is opened, if no writer is busy and the folder is writable.

    Best effort: a read-only atlas, a linked ``tmp/`` (refused at the next write) or a writer holding
    the lock leave everything as it is.
    """
    try:
        with (root / mf.LOCK).open("a+b") as fh:
            release = try_lock(fh)
            if release is None:
                return
            try:
                clean_leftovers(root, mf.read_manifest(root))
            finally:
                release()
    except (OSError, ValueError):
        return


def commit(root: Path, staged: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Make the shard built in ``staged/shard`` visible under ``entry``; returns the new manifest.

    Raises :class:`NameTakenError` when the atlas already lists the name (the shard is not committed).
    """
    with mf.writer_lock(root):
        manifest = mf.read_manifest(root)
        if entry["name"] in [s["name"] for s in manifest["shards"]]:
            msg = f"The atlas already has a dataset named {entry['name']!r}; choose another name."
            raise NameTakenError(msg)
        clean_leftovers(root, manifest)
        (staged / "shard").rename(root / mf.SHARDS / entry["dir"])
        manifest = dict(manifest)
        manifest["shards"] = [*manifest["shards"], entry]
        mf.write_manifest(root, manifest)
    return manifest


# ---------------------------------------------------------------------- claims


def _claim_path(root: Path, name: str) -> Path:
    folder = root / CLAIMS
    if folder.is_symlink():
        msg = f"{folder} is a symbolic link; replace it with a real folder (scsig does not follow it)."
        raise OSError(msg)
    folder.mkdir(exist_ok=True)
    return folder / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"


@contextlib.contextmanager
def claim(root: Path, name: str, *, wait: bool = True, poll: float = 0.2) -> Iterator[bool]:
    """Hold the claim on dataset ``name`` of the atlas at ``root``; yields whether it is held.

    With ``wait=False`` it yields False at once when another writer holds the claim; with
    ``wait=True`` it waits for that writer to finish (or die: the OS releases its lock).
    """
    with _claim_path(root, name).open("a+b") as fh:
        release = try_lock(fh)
        while release is None and wait:
            time.sleep(poll)
            release = try_lock(fh)
        try:
            yield release is not None
        finally:
            if release is not None:
                release()
