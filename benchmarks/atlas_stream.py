"""Benchmark ``Atlas.attribute``: streaming attribution into an atlas, in one process and on a LocalCluster.

Uses a random model at the SCimilarity shape (28,231 -> 1024 -> 1024 -> 128, the fast engine) and
synthetic counts with about 2,100 expressed genes per cell (``benchmarks/attribution.py``'s data),
written to backed ``.h5ad`` files. Two measurements:

``--mode stream``
    One dataset of ``--cells`` cells (for each value given) attributed from a backed .h5ad straight
    into an atlas, each size in a fresh process: seconds, cells/s and the process's peak RSS, to
    show that memory does not grow with the number of cells.

``--mode cluster``
    ``--datasets`` files of ``--dataset-cells`` cells each, attributed into an atlas (a) in this
    process with one thread, and (b) on a ``distributed.LocalCluster`` of 1 and of 2 worker
    processes with one thread each: wall seconds, cells/s, the peak RSS of each worker, the
    speed-up of 2 workers over 1, and the largest difference of the stored attributions to (a)
    (0 means identical values).

Usage::

    python benchmarks/atlas_stream.py --mode stream --cells 10000 40000
    python benchmarks/atlas_stream.py --mode cluster --datasets 4 --dataset-cells 2000

The machine's other load changes absolute speeds; compare numbers from the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STREAM = textwrap.dedent(
    """
    import json, resource, sys, time
    import scsig as sg

    model_dir, h5ad, root = sys.argv[1:4]
    sg.settings.n_jobs = 1
    model = sg.models.load(model_dir)
    atlas = sg.Atlas.create(root, gene_order=model.gene_order)
    start = time.perf_counter()
    report = atlas.attribute(h5ad, model, names="data", progress=False)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": seconds, "peak_rss_gb": rss, "n_obs": int(report["n_obs"].iloc[0]),
                      "nnz": int(report["nnz"].iloc[0])}))
    """
)


def _peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def stream(args: argparse.Namespace, tmp: Path) -> list[dict]:
    from attribution import build_model_folder, write_h5ad_chunked

    model_dir = tmp / "model"
    genes = build_model_folder(model_dir)
    rows = []
    for n in args.cells:
        h5ad = tmp / f"counts_{n}.h5ad"
        nnz = write_h5ad_chunked(h5ad, n, genes)
        got = _run_json([sys.executable, "-c", STREAM, str(model_dir), str(h5ad), str(tmp / f"atlas_{n}")])
        got |= {"cells": n, "input_nnz_per_cell": nnz / n, "cells_per_s": n / got["seconds"]}
        rows.append(got)
        print(
            f"stream {n:>9,} cells: {got['seconds']:8.1f} s, {got['cells_per_s']:7.1f} cells/s, "
            f"peak RSS {got['peak_rss_gb']:.2f} GB",
            flush=True,
        )
        h5ad.unlink()
    return rows


def _warm_up(model_dir: str, h5ad: str) -> float:
    """Load the model and attribute a few cells once (imports and compiled kernels), outside the timing."""
    import anndata as ad

    import scsig as sg

    start = time.perf_counter()
    sg.tl.attribute(ad.read_h5ad(h5ad)[:64].copy(), sg.models.load(model_dir), progress=False)
    return time.perf_counter() - start


def _max_diff(a, b) -> float:
    import numpy as np

    x, y = a.to_anndata(progress=False), b.to_anndata(progress=False)
    if x.shape != y.shape or not x.obs.index.equals(y.obs.index):
        return float("inf")
    d = (x.layers["attr_ig"] - y.layers["attr_ig"]).tocsr()
    return float(np.abs(d.data).max()) if d.nnz else 0.0


def cluster(args: argparse.Namespace, tmp: Path) -> dict:
    import distributed
    from attribution import build_model_folder, write_h5ad_chunked

    import scsig as sg

    model_dir = tmp / "model"
    genes = build_model_folder(model_dir)
    files = []
    for k in range(args.datasets):
        files.append(tmp / f"d{k}.h5ad")
        write_h5ad_chunked(files[-1], args.dataset_cells, genes, unique=min(5000, args.dataset_cells))
    model = sg.models.load(model_dir)
    total = args.datasets * args.dataset_cells
    out: dict = {"datasets": args.datasets, "cells_per_dataset": args.dataset_cells}

    sg.settings.n_jobs = 1
    _warm_up(str(model_dir), str(files[0]))
    single = sg.Atlas.create(tmp / "single", gene_order=model.gene_order)
    start = time.perf_counter()
    single.attribute([str(f) for f in files], model, progress=False)
    out["single_process"] = {"seconds": time.perf_counter() - start}
    out["single_process"]["cells_per_s"] = total / out["single_process"]["seconds"]
    print(f"one process, 1 thread : {out['single_process']['cells_per_s']:7.1f} cells/s", flush=True)

    for workers in args.workers:
        with (
            distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=None
            ) as lc,
            distributed.Client(lc) as client,
        ):
            client.run(_warm_up, str(model_dir), str(files[0]))
            atlas = sg.Atlas.create(tmp / f"cluster_{workers}", gene_order=model.gene_order)
            start = time.perf_counter()
            atlas.attribute([str(f) for f in files], model, client=client, progress=False)
            seconds = time.perf_counter() - start
            rss = sorted(client.run(_peak_rss).values())
        row = {"seconds": seconds, "cells_per_s": total / seconds, "worker_peak_rss_gb": rss}
        row["max_abs_diff_to_single_process"] = _max_diff(atlas, single)
        out[f"workers_{workers}"] = row
        print(
            f"LocalCluster, {workers} worker(s) x 1 thread: {row['cells_per_s']:7.1f} cells/s, worker peak RSS "
            f"{', '.join(f'{r:.2f}' for r in rss)} GB, max |diff| to one process {row['max_abs_diff_to_single_process']}",
            flush=True,
        )
    if "workers_1" in out and "workers_2" in out:
        out["speedup_2_over_1"] = out["workers_2"]["cells_per_s"] / out["workers_1"]["cells_per_s"]
        print(f"2 workers / 1 worker: {out['speedup_2_over_1']:.2f}x", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["stream", "cluster"], default="stream")
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 40_000], help="sizes for --mode stream")
    parser.add_argument("--datasets", type=int, default=4, help="files for --mode cluster")
    parser.add_argument("--dataset-cells", type=int, default=2_000, help="cells per file for --mode cluster")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="LocalCluster sizes")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the data (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        result = stream(args, Path(tmp)) if args.mode == "stream" else cluster(args, Path(tmp))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
