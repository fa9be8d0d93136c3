"""What the atlas's integrity checks cost: checksums at add time, per-chunk crc32c on reads, ``verify()``.

Builds the same synthetic dataset (the shape of ``benchmarks/atlas.py``: 28,231 genes, ~2,090
nonzeros per cell, read backed from an .h5 file) into two atlases in one process: one as scsig
writes it (per-chunk crc32c codec, every file hashed with sha256 into ``checksums.json`` before the
manifest commit, with the frame of every value and row-index file) and one with the per-chunk codec
removed (queried without frame checks). It reports the time of hashing the files as a share of the
add, the query time of 100 frequent genes on both (warm, best of ``--repeats``), the first query
after opening the atlas with and without the frame checks (each value and row-index file's chunk
index and crc32c trailers, checked the first time a read touches it), and the time of
``atlas.verify()``. The builds alternate (``--builds`` each, the fastest kept) and the queries are
interleaved, so both variants see the same machine load; compare the ratios measured in one run.

    python benchmarks/atlas_integrity.py --cells 100000 [--workdir /tmp/scsig_integrity] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from atlas import N_GENES, gene_sets, generate  # noqa: E402


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(root: Path, h5: Path, *, crc_chunks: bool) -> dict:
    import anndata as ad
    import h5py
    import pandas as pd

    import scsig as sg
    from scsig.atlas import _integrity, _store

    genes = [f"G{i}" for i in range(N_GENES)]
    spent = {"seal": 0.0}
    seal = _integrity.seal_shard

    def timed_seal(folder):
        t = time.perf_counter()
        out = seal(folder)
        spent["seal"] += time.perf_counter() - t
        return out

    original_spec = _store._array_spec

    def spec_without_crc(*args, **kwargs):
        spec = original_spec(*args, **kwargs)
        codecs = spec["metadata"]["codecs"]
        inner = codecs[0]["configuration"]["codecs"] if codecs[0]["name"] == "sharding_indexed" else codecs
        inner[:] = [c for c in inner if c["name"] != "crc32c"]
        return spec

    _integrity.seal_shard = timed_seal
    if not crc_chunks:
        _store._array_spec = spec_without_crc
    try:
        with h5py.File(h5, "r") as f:
            layer = ad.io.sparse_dataset(f["X"])
            n = layer.shape[0]
            adata = ad.AnnData(
                obs=pd.DataFrame({"sample": pd.Categorical(np.arange(n) % 20)}, index=[f"c{i}" for i in range(n)]),
                var=pd.DataFrame(index=genes),
            )
            adata.layers["attr_ig"] = layer
            shutil.rmtree(root, ignore_errors=True)
            t = time.perf_counter()
            atlas = sg.Atlas.create(root, gene_order=genes)
            atlas.add(adata, name="synthetic", progress=False)
            total = time.perf_counter() - t
    finally:
        _integrity.seal_shard = seal
        _store._array_spec = original_spec
    return {"add_seconds": total, "seal_seconds": spent["seal"], "bytes": _du(root)}


def _frames(*, checked: bool) -> None:
    """Queries check the frames of bulk files (as scsig does) or not (the atlas without per-chunk crc32c has none)."""
    from scsig.atlas import _integrity, _query

    _query.load_frames = _integrity.load_frames if checked else (lambda *_: None)


def _clear_readers() -> None:
    from scsig.atlas import _query

    _query._READERS.clear()
    _query._OBS.clear()
    _query._CHECKED.clear()


def query(root: Path, genes: list[str], repeats: int, *, frames: bool) -> float:
    import scsig as sg

    _frames(checked=frames)
    atlas = sg.Atlas.open(root)
    best = np.inf
    for _ in range(repeats + 1):  # the first run warms the caches
        t = time.perf_counter()
        atlas.score(genes, progress=False)
        best = min(best, time.perf_counter() - t)
    _frames(checked=True)
    return best


def first_query(root: Path, genes: list[str], *, frames: bool) -> float:
    """The first query after the process opened the dataset (metadata read, files checked, readers opened)."""
    import scsig as sg

    _frames(checked=frames)
    _clear_readers()
    t = time.perf_counter()
    sg.Atlas.open(root).score(genes, progress=False)
    out = time.perf_counter() - t
    _frames(checked=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scsig_integrity"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="reuse the atlases of an earlier run in --workdir")
    parser.add_argument("--builds", type=int, default=2)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    saved = args.workdir / "integrity.json"
    if args.reuse:  # the atlases of an earlier run: rerun the queries and verify only
        res = json.loads(saved.read_text())
    else:
        gen = generate(args.cells, args.workdir, npz=False)
        res = {"cells": args.cells, "nnz": gen["nnz"]}
        # alternate the two builds (twice each, the first also compiles) and keep each one's fastest run
        runs: dict[str, list[dict]] = {"checked": [], "no_chunk_crc": []}
        for _ in range(args.builds):
            runs["no_chunk_crc"].append(build(args.workdir / "plain", args.workdir / "x.h5", crc_chunks=False))
            runs["checked"].append(build(args.workdir / "checked", args.workdir / "x.h5", crc_chunks=True))
        for key, found in runs.items():
            res[key] = min(found, key=lambda r: r["add_seconds"])
            res[key]["all_add_seconds"] = [r["add_seconds"] for r in found]
    p = np.load(args.workdir / "freq.npy")
    frequent = [f"G{i}" for i in gene_sets(p)["frequent_100"]]
    times: dict[str, list[float]] = {"checked": [], "no_chunk_crc": []}
    folders = {"checked": "checked", "no_chunk_crc": "plain"}
    for k in range(args.repeats):  # interleaved, alternating which goes first, so both see the same load
        for key in sorted(times, reverse=bool(k % 2)):
            times[key].append(query(args.workdir / folders[key], frequent, 1, frames=key == "checked"))
    first: dict[bool, list[float]] = {True: [], False: []}
    for k in range(args.repeats):  # the same atlas, first query with / without frame checks, interleaved
        for frames in (True, False) if k % 2 else (False, True):
            first[frames].append(first_query(args.workdir / "checked", frequent, frames=frames))
    res["first_query_median_seconds"] = {
        "frames": float(np.median(first[True])),
        "no_frames": float(np.median(first[False])),
    }
    for key, found in times.items():
        res[key]["query_seconds"] = float(np.min(found))
        res[key]["query_median_seconds"] = float(np.median(found))
    import scsig as sg

    atlas = sg.Atlas.open(args.workdir / "checked")
    t = time.perf_counter()
    damaged = atlas.verify(progress=False)
    res["verify_seconds"] = time.perf_counter() - t
    res["verify_result"] = damaged
    c, u = res["checked"], res["no_chunk_crc"]
    print(json.dumps(res, indent=1))
    print(
        f"\n{args.cells:,} cells, {res['nnz']:,} nonzeros, {c['bytes'] / 1e9:.2f} GB on disk\n"
        f"  checksums of every file at add time: {c['seal_seconds']:.2f} s of a {c['add_seconds']:.1f} s add "
        f"({100 * c['seal_seconds'] / c['add_seconds']:.1f} %)\n"
        f"  add with / without per-chunk crc32c: {c['add_seconds']:.1f} s / {u['add_seconds']:.1f} s "
        f"(x{c['add_seconds'] / u['add_seconds']:.2f})\n"
        f"  query, 100 frequent genes, warm, with / without per-chunk crc32c, best of {args.repeats}: "
        f"{c['query_seconds']:.3f} s / {u['query_seconds']:.3f} s (x{c['query_seconds'] / u['query_seconds']:.2f}); "
        f"median {c['query_median_seconds']:.3f} s / {u['query_median_seconds']:.3f} s "
        f"(x{c['query_median_seconds'] / u['query_median_seconds']:.2f})\n"
        f"  first query after opening, 100 frequent genes, with / without frame checks, median of {args.repeats}: "
        f"{res['first_query_median_seconds']['frames']:.3f} s / {res['first_query_median_seconds']['no_frames']:.3f} s\n"
        f"  atlas.verify(): {res['verify_seconds']:.2f} s ({c['bytes'] / 1e9 / res['verify_seconds']:.2f} GB/s), "
        f"damaged: {damaged}"
    )
    saved.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
