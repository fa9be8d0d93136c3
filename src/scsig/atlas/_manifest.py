"""The atlas manifest (which shards are visible), the writer lock, and atomic file replacement.

Readers only ever see shards listed in ``manifest.json``. A writer builds a shard in ``tmp/``,
renames the finished folder into ``shards/`` and only then replaces the manifest (write a temporary
file, flush it to disk, :func:`os.replace`). A writer killed at any point therefore leaves the
previous manifest, and every shard it lists, untouched; the leftovers (a folder in ``tmp/`` or an
unlisted folder in ``shards/``) are removed by the next writer while it holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["FORMAT", "MANIFEST", "check_layer_name", "jsonable", "read_manifest", "write_manifest", "writer_lock"]

FORMAT = "scsig-atlas"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHECKSUM_KEY = "checksum"
"""Key of the manifest's checksum of its own content (manifests written before it have none)."""
GENE_ORDER = "gene_order.txt"
LOCK = ".lock"
SHARDS = "shards"
TMP = "tmp"


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy of a provenance record (numpy scalars and arrays become Python values)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def check_layer_name(layer: Any, *, what: str = "layer") -> str:
    r"""``layer`` as the name of a shard's attribution layer, or an error saying why it cannot be one.

    The name becomes a folder of the shard (``layers/<name>/``), so it must be one plain path
    component that zarr accepts: not empty, not ``.`` or ``..``, no ``/`` or ``\\``, no control
    characters, not starting with ``__`` (reserved by zarr).
    """
    if not isinstance(layer, str):
        msg = f"The atlas's {what} name must be a string, not {type(layer).__name__} ({layer!r:.40})."
        raise TypeError(msg)
    bad = (
        not layer.strip()
        or layer in (".", "..")
        or "/" in layer
        or "\\" in layer
        or layer.startswith("__")
        or any(ord(c) < 32 or ord(c) == 127 for c in layer)
    )
    if bad:
        msg = (
            f"{what} name {layer!r} cannot name an atlas layer: it becomes a folder of the dataset's shard, so it must "
            "be one plain name (no '/', '\\', control characters, not '.', '..' or starting with '__'), e.g. "
            "'attr_ig'. Rename the layer (adata.layers['attr_ig'] = adata.layers.pop(old)) or pass another key_added."
        )
        raise ValueError(msg)
    return layer


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest at ``root``, checked to be an atlas manifest."""
    path = root / MANIFEST
    if not path.is_file():
        if (root / SHARDS).is_dir() and (root / GENE_ORDER).is_file():
            msg = (
                f"The atlas manifest {path} is missing: the atlas at {root} is damaged. "
                "Restore the atlas folder (or this file) from a copy."
            )
        else:
            msg = (
                f"{root} is not an scsig atlas (no {MANIFEST}). Create one with sg.Atlas.create(path, gene_order=...)."
            )
        raise FileNotFoundError(msg)
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        why = "is empty" if not raw.strip() else f"is not valid JSON ({err})"
        msg = (
            f"The atlas manifest {path} {why}: the file is damaged (scsig replaces it atomically, so a crash of a "
            "writer does not do this; a disk, copy or edit did). Restore the atlas folder (or this file) from a copy."
        )
        raise ValueError(msg) from err
    if not isinstance(manifest, dict):
        msg = f"The atlas manifest {path} is damaged (it holds a {type(manifest).__name__}, not a JSON object); restore it from a copy."
        raise ValueError(msg)
    recorded = manifest.pop(CHECKSUM_KEY, None)
    if recorded is not None and recorded != _manifest_checksum(manifest):
        msg = (
            f"The atlas manifest {path} is damaged: its content does not match its checksum (a byte changed). "
            "Restore the atlas folder (or this file) from a copy."
        )
        raise ValueError(msg)
    if manifest.get("format") != FORMAT:
        msg = f"{path} is not an scsig atlas manifest (format {manifest.get('format')!r})."
        raise ValueError(msg)
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        msg = f"The atlas at {root} has format version {manifest['format_version']}; this scsig reads up to {FORMAT_VERSION}. Upgrade scsig."
        raise ValueError(msg)
    return manifest


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return f"crc32:{zlib.crc32(canonical.encode()) & 0xFFFFFFFF:08x}"


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace the manifest; it records a checksum of its own content (checked on every read)."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    atomic_write_text(root / MANIFEST, json.dumps({**body, CHECKSUM_KEY: _manifest_checksum(body)}, indent=1))


def read_gene_order(root: Path, expected_hash: str) -> list[str]:
    """The atlas's genes from ``gene_order.txt``, checked against the manifest's hash."""
    from ..models import gene_order_hash

    path = root / GENE_ORDER
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        msg = (
            f"{path} cannot be read ({err}); the atlas is damaged. Restore the atlas folder (or this file) from a copy."
        )
        raise ValueError(msg) from err
    genes = lines[:-1] if lines and lines[-1] == "" else lines
    if gene_order_hash(genes) != expected_hash:
        msg = (
            f"{path} does not match the gene order hash in the manifest; the atlas is damaged. "
            "Restore the atlas folder (or this file) from a copy."
        )
        raise ValueError(msg)
    return genes


def manifest_stamp(root: Path) -> tuple[int, int, int]:
    """Changes whenever the manifest is replaced (inode, size, mtime)."""
    st = (root / MANIFEST).stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Hold the atlas's writer lock (one writer at a time; readers never wait).

    The lock is an OS lock on the file ``.lock`` in the atlas (``fcntl.flock`` on POSIX, a
    ``msvcrt`` byte-range lock on Windows), so the OS releases it when a writer dies.
    """
    with (root / LOCK).open("a+b") as fh:
        release = _acquire(fh)
        try:
            yield
        finally:
            release()


def _acquire(fh: Any, *, poll: float = 0.05) -> Any:
    """Block until ``fh`` holds an exclusive OS lock; return the function that releases it."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        return lambda: fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    import msvcrt  # Windows

    def unlock() -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

    while True:  # LK_NBLCK fails at once when another process holds byte 0; LK_LOCK gives up after 10 s
        fh.seek(0)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            time.sleep(poll)
        else:
            return unlock
