"""Writing a model folder safely: only our own files, atomically, with a record of what was written.

Every save goes through :class:`SaveFolder`. It refuses a non-empty folder unless the folder holds
exactly an earlier save of the same kind (as its manifest, :data:`MANIFEST_FILE`, records it: every
listed file present, unchanged and nothing else there) or ``overwrite=True`` is passed. Files are
written to temporary names in a hidden staging folder inside the destination and moved into place
with :func:`os.replace`; on any error the temporary files are removed. With ``overwrite=True`` only the
files this save writes are replaced, and only files that an earlier save's manifest lists (and that
are unchanged since) are removed; nothing else in the folder is touched, and no symbolic link is
followed to write or delete.

A save holds an OS lock on ``.lock`` in its staging folder while it runs (the OS releases it when the
process dies). The next save into the folder removes staging folders that carry scsig's name, whose
lock is free and that hold nothing but that lock and ``.tmp`` files: what a killed save left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .._utils._locks import try_lock
from .._utils._warn import user_stacklevel

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

__all__ = ["MANIFEST_FILE", "SaveFolder"]

MANIFEST_FILE = "scsig-manifest.json"
"""The record of a save: its kind and every file it wrote, with size and SHA-256."""

MANIFEST_FORMAT = "scsig-saved-files"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entries(folder: Path, prefix: str = "") -> dict[str, str]:
    """Everything under ``folder`` (relative POSIX name -> ``"file"``, ``"dir"`` or ``"other"``), links not followed."""
    out = {}
    with os.scandir(folder) as it:
        for entry in it:
            name = f"{prefix}{entry.name}"
            if entry.is_symlink():
                out[name] = "other"
            elif entry.is_dir(follow_symlinks=False):
                out[name] = "dir"
                out.update(_entries(Path(entry.path), f"{name}/"))
            elif entry.is_file(follow_symlinks=False):
                out[name] = "file"
            else:
                out[name] = "other"
    return out


def _safe_name(name: str) -> bool:
    """A plain relative name inside the folder: no absolute path, no ``..``, no empty part."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not PurePosixPath(name).is_absolute() and all(p not in ("", ".", "..") for p in parts)


def _plain_file(folder: Path, name: str) -> bool:
    """``folder/name`` is a regular file reached through real folders only (no symbolic link on the way)."""
    path = folder
    for part in PurePosixPath(name).parts[:-1]:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return False
    path = path / PurePosixPath(name).parts[-1]
    return not path.is_symlink() and path.is_file()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of an earlier save in ``folder``, or ``None`` when there is none (or it is not one of ours)."""
    path = folder / MANIFEST_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
        return None
    files = record.get("files")
    if not isinstance(files, dict):
        return None
    if not all(isinstance(n, str) and _safe_name(n) and isinstance(v, dict) for n, v in files.items()):
        return None
    return record


def _unchanged(folder: Path, name: str, info: dict[str, Any]) -> bool:
    """The listed file is still a regular file with the size and SHA-256 the manifest records."""
    if not _plain_file(folder, name):
        return False
    path = folder / name
    return path.stat().st_size == info.get("size") and file_sha256(path) == info.get("sha256")


def holds_exactly(folder: Path, record: dict[str, Any]) -> bool:
    """``folder`` holds the manifest, the files it lists (unchanged) and their folders, and nothing else."""
    files = record["files"]
    expected = {MANIFEST_FILE: "file"} | dict.fromkeys(files, "file")
    for name in files:
        parents = PurePosixPath(name).parents
        expected.update({str(p): "dir" for p in parents if str(p) != "."})
    if _entries(folder) != expected:
        return False
    return all(_unchanged(folder, name, info) for name, info in files.items())


STAGING_PREFIX = ".scsig-save-"
"""Name prefix of a save's staging folder (then 8 characters of :func:`tempfile.mkdtemp`)."""

STAGING_LOCK = ".lock"
"""File in a staging folder that its save holds an OS lock on while it runs."""

_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"[A-Za-z0-9_]{8}")


def _dead_staging(path: Path) -> bool:
    """A save's staging folder whose writer is gone, holding nothing but its lock and ``.tmp`` files."""
    lock = path / STAGING_LOCK
    if lock.is_symlink() or not lock.is_file():
        return False  # not one this version makes; left alone
    for root, dirs, files in os.walk(path):
        if any(Path(root, d).is_symlink() for d in dirs):
            return False
        if any(not (f.endswith(".tmp") or (f == STAGING_LOCK and Path(root) == path)) for f in files):
            return False
    with lock.open("a+b") as fh:
        release = try_lock(fh)
        if release is None:
            return False  # a live save
        release()
    return True


def remove_dead_staging(folder: Path) -> None:
    """Remove what killed saves left in ``folder``: staging folders (by name) whose lock is free and that hold only temporary files."""
    for entry in folder.iterdir():
        if _STAGING_NAME.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink() and _dead_staging(entry):
            shutil.rmtree(entry, ignore_errors=True)


class SaveFolder:
    """Stage a save's files in ``folder`` under temporary names, then move them into place.

    Parameters
    ----------
    folder
        The destination; created (with its parents) when missing.
    kind
        What is saved (recorded in the manifest); an earlier save of the same kind may be replaced
        without ``overwrite``.
    what
        How to name the save in messages.
    overwrite
        Write into a folder that holds other files: replace only the files this save writes.

    Use as a context manager: :meth:`path` gives the temporary file to write each file to,
    :meth:`commit` moves them all into place; leaving the block removes the temporary files and the
    staging folder (and, after an error, the folders this save created, when empty).
    """

    def __init__(self, folder: str | Path, *, kind: str, what: str, overwrite: bool) -> None:
        self.folder = Path(folder)
        self.kind = kind
        self._staged: dict[str, Path] = {}
        self._staging: Path | None = None
        self._made_dirs: list[Path] = []
        self._lock: Any = None
        self._release: Any = None
        if self.folder.is_dir() and not self.folder.is_symlink():
            remove_dead_staging(self.folder)
        self._previous = self._check_destination(what, overwrite=overwrite)

    # ---- before writing ------------------------------------------------------------------------
    def _check_destination(self, what: str, *, overwrite: bool) -> dict[str, Any]:
        """Check the folder may be written; return the files an earlier save's manifest lists."""
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            msg = f"{str(folder)!r} exists and is not a folder; pass a folder path to save the {what} to."
            raise NotADirectoryError(msg)
        if not folder.exists():
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True)
            self._made_dirs.extend(missing)  # innermost first
            return {}
        record = read_manifest(folder)
        if not any(folder.iterdir()):
            return {}
        ours = record is not None and record.get("kind") == self.kind and holds_exactly(folder, record)
        if not ours and not overwrite:
            names = sorted(p.name for p in folder.iterdir())
            earlier = "an earlier save of another kind or with changed files" if record else "files scsig did not save"
            msg = (
                f"{str(folder)!r} is not empty: it holds {earlier} ({len(names)} entries, e.g. {names[:5]}). "
                f"Save the {what} to a new or empty folder, or pass overwrite=True to replace only the files this "
                "save writes (other files there are left alone)."
            )
            raise FileExistsError(msg)
        return record["files"] if record is not None else {}

    def _parent(self, name: str) -> Path:
        """The real folder that will hold ``name``, made when missing; refuses a symbolic link on the way."""
        if not _safe_name(name):
            msg = f"{name!r} is not a plain file name inside the folder."
            raise ValueError(msg)
        path = self.folder
        for part in PurePosixPath(name).parts[:-1]:
            path = path / part
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                msg = (
                    f"{str(path)!r} is a symbolic link or a file, where this save writes a folder; scsig does not "
                    "write through links. Remove or rename it, or save to another folder."
                )
                raise FileExistsError(msg)
            if not path.exists():
                path.mkdir()
                self._made_dirs.insert(0, path)
        target = path / PurePosixPath(name).parts[-1]
        if target.is_dir() and not target.is_symlink():
            msg = f"{str(target)!r} is a folder, where this save writes a file; remove or rename it."
            raise IsADirectoryError(msg)
        return path

    def path(self, name: str) -> Path:
        """The temporary file to write ``name`` (``"base/gene_order.tsv"``) to.

        Temporary files live in one hidden staging folder inside the destination (the same file
        system, so moving them into place is atomic), each named after its file plus ``.tmp``.
        """
        if name in self._staged or name == MANIFEST_FILE:
            msg = f"{name!r} is written twice in one save."
            raise ValueError(msg)
        return self._stage(name)

    def _stage(self, name: str) -> Path:
        self._parent(name)
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
            self._lock = (self._staging / STAGING_LOCK).open("a+b")  # held while this save runs
            self._release = try_lock(self._lock)
        tmp = self._staging.joinpath(*PurePosixPath(f"{name}.tmp").parts)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        self._staged[name] = tmp
        return tmp

    # ---- moving into place -----------------------------------------------------------------------
    def commit(self, *, last: Sequence[str] = ()) -> None:
        """Move every staged file into place; ``last`` (the files a loader needs first) go last, in order.

        The files in ``last`` are removed first, so that until they are in place the folder holds no
        model a loader would read; then files an earlier save listed and this one does not write are
        removed (when unchanged), the other files are moved in, then ``last``, then the manifest.
        """
        manifest = {
            "format": MANIFEST_FORMAT,
            "kind": self.kind,
            "files": {n: {"size": p.stat().st_size, "sha256": file_sha256(p)} for n, p in sorted(self._staged.items())},
        }
        self._stage(MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        final = [n for n in last if n in self._staged]
        order = [n for n in self._staged if n not in final and n != MANIFEST_FILE]
        for name in final:
            target = self.folder / name
            if target.is_symlink() or target.is_file():
                target.unlink()  # a link is removed itself, never followed
        self._remove_stale()
        for name in [*order, *final, MANIFEST_FILE]:
            self._staged[name].replace(self.folder / name)  # os.replace: atomic
            del self._staged[name]

    def _remove_stale(self) -> None:
        """Remove the files an earlier save listed that this one does not write, if unchanged since."""
        kept = []
        for name, info in sorted(self._previous.items()):
            if name in self._staged:
                continue
            if _unchanged(self.folder, name, info):
                (self.folder / name).unlink()
                for parent in PurePosixPath(name).parents:
                    path = self.folder / parent
                    if str(parent) != "." and not path.is_symlink() and path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
            elif (self.folder / name).exists() or (self.folder / name).is_symlink():
                kept.append(name)
        if kept:
            warnings.warn(
                f"Left {kept[:5]} in {str(self.folder)!r}: an earlier scsig save wrote files of these names, but they "
                "are no longer the files it wrote (changed since, or links), so they are not removed. Remove them if "
                "they are not yours.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    # ---- cleaning up ---------------------------------------------------------------------------
    def __enter__(self) -> SaveFolder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for tmp in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged.clear()
        if self._lock is not None:
            if self._release is not None:
                self._release()
            self._lock.close()
            (self._staging / STAGING_LOCK).unlink(missing_ok=True)
        if self._staging is not None:  # only the folders made for staging, bottom-up, when empty
            for root, _, _ in os.walk(self._staging, topdown=False):
                with contextlib.suppress(OSError):
                    Path(root).rmdir()
        if exc_type is not None:
            for path in self._made_dirs:  # innermost first; only folders this save made, only when empty
                if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                    path.rmdir()
