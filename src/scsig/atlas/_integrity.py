"""Integrity of stored datasets: checksums written at add time, checks on read, and ``Atlas.verify``.

When a dataset is added, every file of its shard is hashed (crc32c when ``google-crc32c`` is
installed, else zlib's crc32) into ``checksums.json`` inside the shard; the manifest entry records
the hash of that file, so the manifest vouches for the list and the list for every file.

Reads check what is cheap: the small files of a shard (metadata, cell metadata, ``indptr``) against
their checksums when the shard is first opened, the structure of the CSC arrays (``indptr`` starts
at 0, never decreases and ends at the recorded number of values; row indices within the cells),
and a missing chunk file is an error instead of zeros. The bulk value and row-index chunks carry a
crc32c per compressed chunk (zarr's ``crc32c`` codec, shards written since checksums exist), so a
flipped bit there fails the read too. :func:`verify_shards` hashes every file.

Shards written before checksums existed have no ``checksums`` entry: reads and ``verify`` check
their structure (``verify`` decodes every chunk) and say that their values cannot be checked.
"""

from __future__ import annotations

import json
import os
import unicodedata
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "CHECKSUMS",
    "DamagedDatasetError",
    "check_name",
    "check_small_files",
    "repair_hint",
    "seal_shard",
    "verify_shards",
]

CHECKSUMS = "checksums.json"
"""The per-shard list of files with their sizes and checksums."""

_READ_BLOCK = 1 << 23


class DamagedDatasetError(RuntimeError):
    """A stored dataset of the atlas is damaged (a file changed, is missing or is inconsistent)."""

    problems: list[str]


def repair_hint(name: str) -> str:
    """How to repair a damaged dataset."""
    return (
        f"Repair: remove the dataset with atlas.remove({name!r}) and add it again (or restore the atlas "
        "folder from a copy); atlas.verify() lists every damaged dataset."
    )


def damaged(name: str, problems: Sequence[str]) -> DamagedDatasetError:
    """The error for dataset ``name`` with ``problems`` (the first few are listed)."""
    err = DamagedDatasetError(f"Dataset {name!r} of the atlas is damaged: {_shown(problems)}. {repair_hint(name)}")
    err.problems = list(problems)
    return err


def _shown(problems: Sequence[str]) -> str:
    return "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")


# ---------------------------------------------------------------------- names


def check_name(name: Any) -> str:
    """``name`` as a dataset name, or a ValueError saying why it cannot be one.

    Names are shown in tables and stored in JSON and h5ad files: any printable text works,
    including ``/``; control characters (newline, tab, NUL, ...), line separators, unpaired
    surrogates and names made only of whitespace are refused.
    """
    if isinstance(name, int | np.integer) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str):
        msg = f"A dataset name must be a string, not {type(name).__name__} ({name!r:.40})."
        raise TypeError(msg)
    if not name.strip():
        msg = f"Dataset name {name!r} is empty or only whitespace; give the dataset a visible name."
        raise ValueError(msg)
    bad = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")})
    if bad:
        msg = (
            f"Dataset name {name!r} contains characters that cannot be shown or stored safely "
            f"({', '.join(repr(c) for c in bad)}: control characters such as newline, tab or NUL); "
            "remove them from the name."
        )
        raise ValueError(msg)
    return name


# ---------------------------------------------------------------------- checksums


def _algorithm() -> str:
    try:
        import google_crc32c  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        return "crc32"
    return "crc32c"


def _digest(algorithm: str) -> Callable[[bytes, int], int]:
    if algorithm == "crc32c":
        try:
            import google_crc32c
        except ImportError as err:  # pragma: no cover - depends on the environment
            msg = "This atlas's checksums are crc32c: pip install google-crc32c (part of 'scsig[atlas]')."
            raise ImportError(msg) from err
        return lambda chunk, crc: google_crc32c.extend(crc, chunk)
    if algorithm == "crc32":
        return lambda chunk, crc: zlib.crc32(chunk, crc)
    msg = f"Unknown checksum algorithm {algorithm!r}; upgrade scsig."
    raise ValueError(msg)


def file_checksum(path: Path, algorithm: str) -> str:
    """The checksum of a file's bytes, as 8 hex digits."""
    update = _digest(algorithm)
    crc = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_READ_BLOCK):
            crc = update(chunk, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def bytes_checksum(data: bytes, algorithm: str) -> str:
    """The checksum of ``data``, as 8 hex digits."""
    return f"{_digest(algorithm)(data, 0) & 0xFFFFFFFF:08x}"


def _files(folder: Path) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(folder):
        for n in names:
            rel = Path(dirpath, n).relative_to(folder).as_posix()
            if rel != CHECKSUMS:
                out.append(rel)
    return sorted(out)


def seal_shard(folder: Path) -> dict[str, Any]:
    """Hash every file of a finished shard into ``checksums.json``; returns the manifest's record of it."""
    from ._manifest import atomic_write_text

    algorithm = _algorithm()
    files = {}
    total = 0
    for rel in _files(folder):
        size = (folder / rel).stat().st_size
        files[rel] = [size, file_checksum(folder / rel, algorithm)]
        total += size
    text = json.dumps({"algorithm": algorithm, "files": files}, indent=0, sort_keys=True)
    atomic_write_text(folder / CHECKSUMS, text)
    return {
        "file": CHECKSUMS,
        "algorithm": algorithm,
        "checksum": bytes_checksum(text.encode(), algorithm),
        "n_files": len(files),
        "bytes": total,
    }


def load_checksums(folder: Path, record: dict[str, Any], name: str) -> dict[str, list]:
    """The shard's ``{file: [size, checksum]}``, after checking the list itself against the manifest."""
    path = folder / record.get("file", CHECKSUMS)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise damaged(name, [f"its checksum list {path} cannot be read ({err})"]) from err
    algorithm = record["algorithm"]
    if bytes_checksum(raw, algorithm) != record["checksum"]:
        raise damaged(name, [f"its checksum list {path} does not match the manifest"])
    return json.loads(raw)["files"]


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


def check_indptr(indptr: np.ndarray, *, n_values: int, n_values_indices: int, nnz: int | None, name: str) -> None:
    """Structural checks of a gene-major ``indptr`` against the stored arrays and the manifest."""
    problems = []
    if indptr.size < 1 or indptr[0] != 0:
        problems.append("its column pointer (indptr) does not start at 0")
    elif np.any(indptr[1:] < indptr[:-1]):
        problems.append("its column pointer (indptr) decreases")
    elif indptr[-1] != n_values:
        problems.append(f"its column pointer (indptr) ends at {int(indptr[-1])} but {n_values} values are stored")
    if n_values != n_values_indices:
        problems.append(f"it stores {n_values} values but {n_values_indices} row indices")
    if nnz is not None and n_values != nnz:
        problems.append(f"it stores {n_values} values but the manifest recorded {nnz}")
    if problems:
        raise damaged(name, problems)


def check_rows(indices: np.ndarray, n_obs: int, name: str) -> None:
    """Row indices read from a shard are cell positions of the dataset."""
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_obs):
        raise damaged(
            name, [f"row indices outside its {n_obs} cells (from {int(indices.min())} to {int(indices.max())})"]
        )


# ---------------------------------------------------------------------- verify


def _missing_chunk_files(folder: Path) -> list[str]:
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
        problems = _missing_chunk_files(folder)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise damaged(
            name, [f"the metadata of its layer {layer!r} cannot be read ({type(err).__name__}: {err})"]
        ) from err
    if nnz == 0:
        problems = [p for p in problems if "indptr/" not in p]
    if problems:
        raise damaged(name, problems)


def _structure(root: Path, entry: dict[str, Any], *, decode: bool) -> list[str]:
    """Open the shard as a query would (and, with ``decode``, read every value) and report what fails."""
    from ._query import ShardSpec, shard_obs
    from ._store import CHUNK, ShardReader

    name = entry["name"]
    spec = ShardSpec(
        name=name,
        path=str(root / "shards" / entry["dir"]),
        layer=entry["layer"],
        n_obs=int(entry["n_obs"]),
        nnz=int(entry["nnz"]),
        seal=None,
    )
    try:
        shard_obs(spec, cache=False)
        reader = ShardReader(Path(spec.path), spec.layer, name=name, n_obs=spec.n_obs, nnz=spec.nnz, strict=False)
        if decode:
            problems = _missing_chunk_files(Path(spec.path) / "layers" / spec.layer)
            if problems:
                return problems
            step = CHUNK * 64
            for lo in range(0, int(reader.indptr[-1]), step):
                hi = min(int(reader.indptr[-1]), lo + step)
                data = np.asarray(reader.data[lo:hi].read().result())
                check_rows(np.asarray(reader.indices[lo:hi].read().result()), spec.n_obs, name)
                if not np.all(np.isfinite(data)):
                    raise damaged(name, ["it stores NaN or infinite values"])
            for g in range(reader.indptr.size - 1):  # rows ascending within each gene
                a, b = int(reader.indptr[g]), int(reader.indptr[g + 1])
                if b - a > 1:
                    rows = np.asarray(reader.indices[a:b].read().result())
                    if np.any(rows[1:] <= rows[:-1]):
                        raise damaged(name, [f"row indices of gene position {g} are not ascending"])
    except DamagedDatasetError as err:
        return list(err.problems)
    except Exception as err:  # noqa: BLE001 - any failure to read is damage to report
        return [f"reading it fails: {type(err).__name__}: {err}"]
    return []


def verify_shards(
    root: Path, manifest: dict[str, Any], names: Sequence[str] | None, *, progress: bool
) -> dict[str, list[str]]:
    """``{dataset: problems}`` for the damaged datasets among ``names`` (all by default)."""
    from .._utils._progress import tqdm

    entries = [s for s in manifest["shards"] if names is None or s["name"] in names]
    damaged_sets: dict[str, list[str]] = {}
    unsealed = []
    for entry in tqdm(entries, disable=not progress, desc="verify", unit="dataset"):
        name = entry["name"]
        folder = root / "shards" / entry["dir"]
        if not folder.is_dir():
            damaged_sets[name] = [f"its folder {folder} is missing"]
            continue
        record = entry.get("checksums")
        if record is None:
            unsealed.append(name)
            problems = _structure(root, entry, decode=True)
        else:
            try:
                files = load_checksums(folder, record, name)
            except DamagedDatasetError as err:
                problems = list(err.problems)
            else:
                problems = check_files(folder, files, record["algorithm"])
                extra = sorted(set(_files(folder)) - set(files))
                problems += [f"file {rel} was not written by scsig" for rel in extra]
                if not problems:
                    problems = _structure(root, entry, decode=False)
        if problems:
            damaged_sets[name] = problems
    if unsealed:
        warnings.warn(
            f"{len(unsealed)} datasets were added before scsig recorded checksums ({unsealed[:5]}"
            f"{' ...' if len(unsealed) > 5 else ''}): their structure was checked and every chunk decoded, "
            "but changed values cannot be detected. Remove and re-add them to get checksums.",
            UserWarning,
            stacklevel=3,
        )
    for name, problems in damaged_sets.items():
        warnings.warn(
            f"Dataset {name!r} is damaged: {_shown(problems)}. {repair_hint(name)}", UserWarning, stacklevel=3
        )
    return damaged_sets
