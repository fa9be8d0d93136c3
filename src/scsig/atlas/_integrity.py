"""Integrity of stored datasets: checksums written at add time and the checks reads make (``Atlas.verify`` is in :mod:`._verify`).

**What is recorded.** When a dataset is added, every file of its shard is hashed with sha256 into
``checksums.json`` inside the shard, and the manifest entry records the sha256 of that list (and
its algorithm), so the manifest vouches for the list and the list for every file. The manifest
carries a crc32 of its own content and the gene order's sha256. The bulk files, the value
(``data``) and row-index (``indices``) arrays, are zarr v3 *shard files*: chunks of 16,384 values,
each ``blosc(little-endian bytes)`` followed by the crc32c of those bytes (zarr's ``crc32c`` codec),
stored back to back, then the chunk index at the end of the file (offset and length of each chunk as
uint64, then the index's own crc32c). For each of them the list also records the sha256 of its
*frame*: the chunk index followed by every chunk's 4-byte crc32c trailer (:func:`frame_digest`).

**What reads check.** When a process first opens a shard: the small files (metadata, cell
metadata, ``indptr``, the per-cell sums) against their sha256, and the structure of the CSC arrays
(``indptr`` starts at 0, never decreases and ends at the recorded number of values). The first time
a read touches a bulk file: its frame against the record (the index and one 4-byte read per chunk,
not the chunks). Every chunk TensorStore decodes is checked against its crc32c trailer, so a chunk
that is not the one written fails (up to a crc32c collision), whether it was damaged, re-framed
after a change, or taken from another build of the dataset or from another dataset. Row indices
must be cells of the dataset, and a missing chunk file is an error instead of zeros.

**What ``verify`` checks.** Every byte: the sha256 of every file, no file missing or added, the
frames reads will check, and the structure. The manifest's crc32 and the lists' checksums hash JSON
text, which holds no checksum of its own parts, so they do not have the blind spot of the older
whole-file crc32c below (a changed manifest passes its crc32 only by a 1 in 2**32 chance).

**What is not covered.** Integrity protects against damage (a flipped bit, a truncated, missing or
empty file) and mix-ups (a file or a shard folder from another build of the dataset or from another
dataset); it is not protection against an adversary. A deliberate, consistent rewrite (values,
names or metadata changed and every checksum that covers them recomputed) goes undetected, as does a
crafted chunk with the same crc32c as the original (reads check chunks by crc32c; ``verify`` by
sha256). What was wrong before a dataset was added is stored as it came.

**Older atlases.** Seals written before content hashes used a whole-file crc32c (zlib's crc32 where
``google-crc32c`` was missing) and record no frames; they still open and verify as before, and
``verify`` warns. The crc32c of a file made of crc32c-framed chunks depends only on the chunks'
lengths (the crc of ``chunk + crc(chunk)`` is a constant), so with a crc32c seal the value,
row-index, column-pointer and per-cell-sum files are checked only by their chunk framing: a file
from another build of the dataset passes both ``verify`` and reads. zlib's crc32, another
polynomial, sees the content, so ``verify`` finds such a file; reads cannot. Removing and re-adding
a dataset gives it content hashes. Shards written before checksums existed have no ``checksums``
entry: reads and ``verify`` check their structure (``verify`` decodes every chunk) and say that
their values cannot be checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import damaged

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "CHECKSUMS",
    "check_chunk_files",
    "check_files",
    "check_frames",
    "check_small_files",
    "load_checksums",
    "load_frames",
    "seal_shard",
    "shard_layout",
]

CHECKSUMS = "checksums.json"
"""The per-shard list of files with their sizes and checksums."""

_READ_BLOCK = 1 << 23

# ---------------------------------------------------------------------- checksums

CONTENT_HASH = "sha256"
"""The hash of new seals. It sees every byte; measured here on a 168 MB file with the OS cache warm,
sha256 hashed 1.36 GB/s (OpenSSL with the CPU's SHA extensions), blake2b 0.71 GB/s, crc32c 5.4 GB/s."""

FRAMES = "zarr3-shard-index+crc32c-trailers"
"""What a frame record hashes (with the seal's hash), per bulk file: the shard file's chunk index
(with its crc32c) followed by the crc32c each stored chunk ends with, in index order."""

_WEAK = ("crc32c", "crc32")
"""Whole-file checksums of older seals. crc32c cannot see the content of a file made of crc32c-framed
chunks (the crc of ``chunk + crc(chunk)`` is a constant); zlib's crc32, another polynomial, can."""

_EMPTY = (1 << 64) - 1
"""Offset and length of a chunk a zarr shard file does not store."""


class _Crc:
    """crc32c or crc32 with a hashlib-like interface (older seals)."""

    def __init__(self, algorithm: str) -> None:
        if algorithm == "crc32c":
            try:
                import google_crc32c
            except ImportError as err:  # pragma: no cover - depends on the environment
                msg = "This atlas's checksums are crc32c: pip install google-crc32c (part of 'scsig[atlas]')."
                raise ImportError(msg) from err
            self._extend = google_crc32c.extend
        else:
            self._extend = lambda crc, chunk: zlib.crc32(chunk, crc)
        self._crc = 0

    def update(self, data: bytes) -> None:
        self._crc = self._extend(self._crc, data)

    def hexdigest(self) -> str:
        return f"{self._crc & 0xFFFFFFFF:08x}"


def _hasher(algorithm: str) -> Any:
    if algorithm == CONTENT_HASH:
        return hashlib.sha256()
    if algorithm in _WEAK:
        return _Crc(algorithm)
    msg = f"Unknown checksum algorithm {algorithm!r} in the atlas; upgrade scsig (pip install -U scsig)."
    raise ValueError(msg)


def file_checksum(path: Path, algorithm: str) -> str:
    """The checksum of a file's bytes, as hex digits."""
    h = _hasher(algorithm)
    with path.open("rb") as fh:
        while chunk := fh.read(_READ_BLOCK):
            h.update(chunk)
    return h.hexdigest()


def bytes_checksum(data: bytes, algorithm: str) -> str:
    """The checksum of ``data``, as hex digits."""
    h = _hasher(algorithm)
    h.update(data)
    return h.hexdigest()


def stored_files(folder: Path) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(folder):
        for n in names:
            rel = Path(dirpath, n).relative_to(folder).as_posix()
            if rel != CHECKSUMS:
                out.append(rel)
    return sorted(out)


# ---------------------------------------------------------------------- frames of bulk files


def shard_layout(meta: dict[str, Any]) -> tuple[int, int] | None:
    """``(values per shard file, chunks per shard file)`` of a 1-D array written as scsig writes bulk arrays.

    That is, from its ``zarr.json``: one ``sharding_indexed`` codec whose index sits at the end of the
    file, encoded ``bytes`` (little endian) + ``crc32c`` (16 bytes per chunk: offset and length as
    uint64, then 4 bytes of crc32c), and whose chunks' codecs end with ``crc32c`` (each stored chunk
    ends with the crc32c of the bytes before it). ``None`` for any other array.
    """
    try:
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        (shard,) = meta["chunk_grid"]["configuration"]["chunk_shape"]
        (chunk,) = cfg["chunk_shape"]
        index = [(c["name"], c.get("configuration")) for c in cfg["index_codecs"]]
        ok = (
            codec["name"] == "sharding_indexed"
            and cfg.get("index_location", "end") == "end"
            and index == [("bytes", {"endian": "little"}), ("crc32c", None)]
            and cfg["codecs"][-1]["name"] == "crc32c"
            and len(meta["shape"]) == 1
            and int(chunk) > 0
            and int(shard) % int(chunk) == 0
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return (int(shard), int(shard) // int(chunk)) if ok else None


def frame_digest(path: Path, n_chunks: int, algorithm: str) -> str:
    """The hash of a shard file's frame: its chunk index, then the crc32c trailer of each stored chunk.

    Reads ``16 * n_chunks + 4`` bytes at the end of the file and 4 bytes per chunk, not the chunks.
    TensorStore checks each chunk it reads against its trailer, so a file whose frame matches the
    record holds the recorded chunks (up to a crc32c collision). Raises ValueError when the index
    points outside the file.
    """
    index_size = 16 * n_chunks + 4
    h = _hasher(algorithm)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < index_size:
            msg = f"it has {size} bytes, fewer than its chunk index ({index_size})"
            raise ValueError(msg)
        index = os.pread(fd, index_size, size - index_size)
        entries = np.frombuffer(index, dtype="<u8", count=2 * n_chunks).tolist()
        parts = [index]
        for offset, length in zip(entries[0::2], entries[1::2], strict=True):
            if offset == _EMPTY and length == _EMPTY:
                continue
            if length < 4 or offset + length > size - index_size:
                msg = "its chunk index points outside the file"
                raise ValueError(msg)
            parts.append(os.pread(fd, 4, offset + length - 4))
    finally:
        os.close(fd)
    h.update(b"".join(parts))
    return h.hexdigest()


def _frames(folder: Path, files: Sequence[str], algorithm: str) -> dict[str, str]:
    """``{file: frame digest}`` for the chunk files of the shard's crc32c-framed sharded arrays."""
    layouts: dict[str, tuple[int, int] | None] = {}
    out = {}
    for rel in files:
        array, sep, _ = rel.rpartition("/c/")
        if not sep:
            continue
        if array not in layouts:
            try:
                layouts[array] = shard_layout(json.loads((folder / array / "zarr.json").read_text()))
            except (OSError, ValueError):
                layouts[array] = None
        layout = layouts[array]
        if layout is not None:
            out[rel] = frame_digest(folder / rel, layout[1], algorithm)
    return out


def seal_shard(folder: Path) -> dict[str, Any]:
    """Hash every file of a finished shard into ``checksums.json``; returns the manifest's record of it.

    The list also records the frame (:func:`frame_digest`) of every value and row-index shard file,
    which reads check cheaply the first time they touch the file.
    """
    from ._manifest import atomic_write_text

    algorithm = CONTENT_HASH
    files = {}
    total = 0
    names = stored_files(folder)
    for rel in names:
        size = (folder / rel).stat().st_size
        files[rel] = [size, file_checksum(folder / rel, algorithm)]
        total += size
    listing = {
        "algorithm": algorithm,
        "files": files,
        "frame_scheme": FRAMES,
        "frames": _frames(folder, names, algorithm),
    }
    text = json.dumps(listing, indent=0, sort_keys=True)
    atomic_write_text(folder / CHECKSUMS, text)
    return {
        "file": CHECKSUMS,
        "algorithm": algorithm,
        "checksum": bytes_checksum(text.encode(), algorithm),
        "n_files": len(files),
        "bytes": total,
    }


def load_listing(folder: Path, record: dict[str, Any], name: str) -> dict[str, Any]:
    path = folder / record.get("file", CHECKSUMS)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise damaged(name, [f"its checksum list {path} cannot be read ({err})"]) from err
    if bytes_checksum(raw, record["algorithm"]) != record["checksum"]:
        raise damaged(name, [f"its checksum list {path} does not match the manifest"])
    return json.loads(raw)


def load_checksums(folder: Path, record: dict[str, Any], name: str) -> dict[str, list]:
    """The shard's ``{file: [size, checksum]}``, after checking the list itself against the manifest."""
    return load_listing(folder, record, name)["files"]


def load_frames(folder: Path, seal: tuple[str, str] | None, name: str) -> dict[str, str] | None:
    """The shard's ``{bulk file: frame digest}`` (checked against the manifest), or None for older seals.

    Shards sealed before frames were recorded (crc32c or crc32 seals) and shards without a seal have none.
    """
    if seal is None or seal[0] in _WEAK:
        return None
    algorithm, checksum = seal
    listing = load_listing(folder, {"algorithm": algorithm, "checksum": checksum}, name)
    if listing.get("frame_scheme") != FRAMES:
        msg = (
            f"Dataset {name!r}: its checksum list records the chunk framing in a way this scsig does not know; "
            "upgrade scsig (pip install -U scsig)."
        )
        raise ValueError(msg)
    return listing["frames"]


def check_frames(folder: Path, rels: Iterable[str], frames: dict[str, str], n_chunks: int, algorithm: str) -> list[str]:
    """Problems of the bulk files ``rels`` of ``folder`` against their recorded frames."""
    problems = []
    for rel in rels:
        recorded = frames.get(rel)
        if recorded is None:
            problems.append(f"its checksum list has no record of the chunks of file {rel}")
            continue
        try:
            actual = frame_digest(folder / rel, n_chunks, algorithm)
        except FileNotFoundError:
            problems.append(f"file {rel} is missing")
            continue
        except (OSError, ValueError) as err:
            problems.append(f"file {rel} cannot be checked: {err}")
            continue
        if actual != recorded:
            problems.append(
                f"file {rel} changed: its chunks are not the ones written (changed, or taken from another build or dataset)"
            )
    return problems


def _bulk(rel: str, layer: str) -> bool:
    """A value or row-index chunk file (large; checked per chunk on read, and by verify)."""
    return rel.startswith((f"layers/{layer}/data/c/", f"layers/{layer}/indices/c/"))


def check_files(
    folder: Path, files: dict[str, list], algorithm: str, *, select: Callable[[str], bool] | None = None
) -> list[str]:
    """Problems of the files of ``folder`` against their recorded sizes and checksums."""
    problems = []
    for rel, (size, crc) in files.items():
        if select is not None and not select(rel):
            continue
        path = folder / rel
        try:
            actual = path.stat().st_size
        except OSError:
            problems.append(f"file {rel} is missing")
            continue
        if actual != size:
            problems.append(f"file {rel} has {actual} bytes, {size} were written")
        elif file_checksum(path, algorithm) != crc:
            problems.append(f"file {rel} changed (checksum mismatch)")
    return problems


def check_small_files(path: Path, seal: tuple[str, str] | None, layer: str, name: str) -> None:
    """On first opening a sealed shard: its small files (all but the value and index chunks) against their checksums."""
    if seal is None:
        return
    algorithm, checksum = seal
    files = load_checksums(path, {"algorithm": algorithm, "checksum": checksum}, name)
    problems = check_files(path, files, algorithm, select=lambda rel: not _bulk(rel, layer))
    if problems:
        raise damaged(name, problems)


# ---------------------------------------------------------------------- chunk files of unsealed shards


def missing_chunk_files(folder: Path) -> list[str]:
    """Chunk (or shard) files of the layer's 1-D arrays that their metadata implies but that are absent."""
    problems = []
    for array in ("data", "indices", "indptr"):
        meta = json.loads((folder / array / "zarr.json").read_text())
        n = int(meta["shape"][0])
        step = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        for k in range(-(-n // step)):
            if not (folder / array / "c" / str(k)).is_file():
                problems.append(f"chunk file {array}/c/{k} is missing")
    return problems


def check_chunk_files(path: Path, layer: str, name: str, nnz: int | None) -> None:
    """For shards written before checksums (read leniently): every chunk file the arrays imply exists.

    Such shards were written without storing all-zero chunks, so a missing file could in principle
    be zeros; for the value and row-index arrays of a non-empty shard that never happens in practice
    (a file holds millions of values), and the column pointer is all zeros only when nothing is stored.
    """
    folder = path / "layers" / layer
    try:
        problems = missing_chunk_files(folder)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise damaged(
            name, [f"the metadata of its layer {layer!r} cannot be read ({type(err).__name__}: {err})"]
        ) from err
    if nnz == 0:
        problems = [p for p in problems if "indptr/" not in p]
    if problems:
        raise damaged(name, problems)
