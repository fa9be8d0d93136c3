"""``Atlas.verify``: every stored byte of the datasets against their seals, and their structure.

Sealed datasets are checked file by file (sha256 of every file, nothing missing or added, the
recorded frames of the bulk files, see :mod:`._integrity`), then opened as a query opens them.
Datasets added before checksums existed have every chunk decoded instead.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils._warn import user_stacklevel
from ._checks import DamagedDatasetError, check_rows, damaged, repair_hint, shown
from ._integrity import (
    FRAMES,
    check_files,
    check_frames,
    load_listing,
    missing_chunk_files,
    shard_layout,
    stored_files,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["verify_shards"]


def _structure(root: Path, entry: dict[str, Any], *, decode: bool) -> list[str]:
    """Open the shard as a query would (and, with ``decode``, read every value) and report what fails."""
    from ._query import ShardSpec, shard_obs
    from ._reader import ShardReader
    from ._store import CHUNK

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
            problems = missing_chunk_files(Path(spec.path) / "layers" / spec.layer)
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


def _names(names: Sequence[str]) -> str:
    return f"{list(names[:5])}{' ...' if len(names) > 5 else ''}"


def _check_recorded_frames(folder: Path, listing: dict[str, Any], algorithm: str) -> list[str]:
    """Problems of a sealed shard's bulk files against the frames its list records (what reads check).

    Every chunk file of a value or row-index array must have a frame record.
    """
    if listing.get("frame_scheme") != FRAMES:
        return [
            f"its checksum list records the chunk framing as {listing.get('frame_scheme')!r}, unknown to this scsig"
        ]
    frames = listing["frames"]
    by_array: dict[str, list[str]] = {}
    for rel in listing["files"]:
        array, sep, _ = rel.rpartition("/c/")
        if sep:
            by_array.setdefault(array, []).append(rel)
    problems = []
    for array, rels in by_array.items():
        try:
            layout = shard_layout(json.loads((folder / array / "zarr.json").read_text()))
        except (OSError, ValueError) as err:
            problems.append(f"the metadata of array {array} cannot be read ({err})")
            continue
        if layout is not None:
            problems += check_frames(folder, rels, frames, layout[1], algorithm)
    return problems


def verify_shards(
    root: Path, manifest: dict[str, Any], names: Sequence[str] | None, *, progress: bool
) -> dict[str, list[str]]:
    """``{dataset: problems}`` for the damaged datasets among ``names`` (all by default)."""
    from .._utils._progress import tqdm

    entries = [s for s in manifest["shards"] if names is None or s["name"] in names]
    damaged_sets: dict[str, list[str]] = {}
    unsealed = []
    weak: dict[str, list[str]] = {"crc32c": [], "crc32": []}
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
            algorithm = record["algorithm"]
            if algorithm in weak:
                weak[algorithm].append(name)
            try:
                listing = load_listing(folder, record, name)
            except DamagedDatasetError as err:
                problems = list(err.problems)
            else:
                files = listing["files"]
                problems = check_files(folder, files, algorithm)
                extra = sorted(set(stored_files(folder)) - set(files))
                problems += [f"file {rel} was not written by scsig" for rel in extra]
                if not problems and algorithm not in weak:
                    problems = _check_recorded_frames(folder, listing, algorithm)
                if not problems:
                    problems = _structure(root, entry, decode=False)
        if problems:
            damaged_sets[name] = problems
    if unsealed:
        warnings.warn(
            f"{len(unsealed)} datasets were added before scsig recorded checksums ({_names(unsealed)}): their structure was checked and every chunk decoded, "
            "but changed values cannot be detected. Remove and re-add them to get checksums.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if weak["crc32c"]:
        listed = _names(weak["crc32c"])
        warnings.warn(
            f"{len(weak['crc32c'])} datasets were added by an older scsig, whose crc32c checksums cannot see the "
            f"content of the value, row-index, column-pointer and per-cell sum files ({listed}): for those files "
            "verify() only checks each stored chunk against its own crc32c, so a flipped bit is found but a file "
            "taken from another build of the same dataset is not, and queries cannot tell either. "
            "Remove and re-add them to get checksums of the content.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if weak["crc32"]:
        warnings.warn(
            f"{len(weak['crc32'])} datasets were added by an older scsig with crc32 checksums "
            f"({_names(weak['crc32'])}): verify() checks their content, but queries cannot tell a value or "
            "row-index file taken from another build. Remove and re-add them to get checksums that queries check.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    for name, problems in damaged_sets.items():
        warnings.warn(
            f"Dataset {name!r} is damaged: {shown(problems)}. {repair_hint(name)}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return damaged_sets
