"""Benchmark ``Atlas.attribute``: streaming attribution into an atlas, in one process and on a LocalCluster.

Uses a random model at the SCimilarity shape (28,231 -> 1024 -> 1024 -> 128, the fast engine) and
synthetic counts with about 2,100 expressed genes per cell (``benchmarks/attribution.py``'s data),
written to backed ``.h5ad`` files. Two measurements:

``--mode stream``
    One dataset of ``--cells`` cells (for each value given) attributed from a backed .h5ad straight
    into an atlas, each size in a fresh process: seconds, cells/s and the process's peak RSS, to
    show that memory does not grow with the number of cells.

``--mode cluster``
    ``--datasets`` files of ``--dataset-cells`` cells each, attributed into an atlas (a) by one
    process with one thread, (b) by two independent processes at once, each with half of the files
    (no dask: what this machine's cores give, the ceiling for any scheduler), and (c) on a
    ``distributed.LocalCluster`` of 1 and of 2 worker processes with one thread each (default
    blocks of cells, and with ``--per-dataset`` one task per dataset): wall seconds, cells/s, each
    worker's own peak resident memory (VmHWM), the thread counts inside a task, the speed-up of 2
    workers over 1, and the largest difference of the stored attributions to (a) (0 means
    identical values). Every timing starts after a warm-up (imports, compiled kernels); the
    cluster's timing includes sending the model to the workers (reported on its own).

Usage::

    python benchmarks/atlas_stream.py --mode stream --cells 10000 40000
    python benchmarks/atlas_stream.py --mode cluster --datasets 4 --dataset-cells 6000 --per-dataset

The machine's other load changes absolute speeds; compare numbers from the same run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def peak_rss_gb() -> float:
    """This process's own peak resident memory (GB): VmHWM on Linux, else ``ru_maxrss``.

    ``resource.getrusage``'s ``ru_maxrss`` is kept across fork + exec, so a process started by a
    larger one (a dask worker spawned by the LocalCluster's process, which holds the data and the
    model) reports its parent's size instead of its own. VmHWM is the process's own high-water mark.
    """
    import pathlib

    try:
        with pathlib.Path("/proc/self/status").open() as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


STREAM = textwrap.dedent(
    """
    import json, sys, time
    import anndata as ad
    import scsig as sg

    model_dir, root, barrier, *files = sys.argv[1:]
    sg.settings.n_jobs = 1
    model = sg.models.load(model_dir)
    if barrier != "-":  # imports, compiled kernels and the model's first use, outside the timing
        sg.tl.attribute(ad.read_h5ad(files[0], backed="r")[:64].to_memory(), model, progress=False)
        # start together with the other processes of the measurement: "<folder>:<how many>"
        folder, count = barrier.rsplit(":", 1)
        open(f"{folder}/{root.replace('/', '_')}", "w").close()
        while len(__import__("os").listdir(folder)) < int(count):
            time.sleep(0.05)
    atlas = sg.Atlas.create(root, gene_order=model.gene_order)
    start = time.perf_counter()
    report = atlas.attribute(files, model, progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "n_obs": int(report["n_obs"].sum()),
                      "nnz": int(report["nnz"].sum())}))
    """
)
STREAM = inspect.getsource(peak_rss_gb) + STREAM


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
        got = _run_json([sys.executable, "-c", STREAM, str(model_dir), str(tmp / f"atlas_{n}"), "-", str(h5ad)])
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
    sg.tl.attribute(ad.read_h5ad(h5ad, backed="r")[:64].to_memory(), sg.models.load(model_dir), progress=False)
    return time.perf_counter() - start


def _thread_counts() -> dict:
    """Inside a task, as Atlas.attribute's tasks set them: torch's, numba's and the BLAS/OpenMP pools' threads."""
    import os

    import numba
    import torch
    from threadpoolctl import threadpool_info

    from scsig.atlas._cluster import _worker_threads
    from scsig.atlas._stream import pinned_threads

    with pinned_threads(_worker_threads()):
        return {
            "torch": torch.get_num_threads(),
            "numba": numba.get_num_threads(),
            "blas_openmp": sorted({p["num_threads"] for p in threadpool_info()}),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        }


def _max_diff(a, b) -> float:
    import numpy as np

    x, y = a.to_anndata(progress=False), b.to_anndata(progress=False)
    if x.shape != y.shape or not x.obs.index.equals(y.obs.index):
        return float("inf")
    d = (x.layers["attr_ig"] - y.layers["attr_ig"]).tocsr()
    return float(np.abs(d.data).max()) if d.nnz else 0.0


def _processes(model_dir: Path, groups: list[list[Path]], tmp: Path, tag: str) -> dict:
    """Independent processes (no dask), one per group of files, each warmed up, then timed from a common start."""
    import os

    barrier = tmp / f"{tag}_barrier"
    barrier.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }  # as dask's workers
    procs = []
    for k, group in enumerate(groups):
        cmd = [sys.executable, "-c", STREAM, str(model_dir), str(tmp / f"{tag}_{k}"), f"{barrier}:{len(groups)}"]
        cmd += [str(f) for f in group]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    got = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(err)
        got.append(json.loads(out.strip().splitlines()[-1]))
    cells = sum(g["n_obs"] for g in got)
    seconds = max(g["seconds"] for g in got)
    return {"seconds": seconds, "cells_per_s": cells / seconds, "peak_rss_gb": [g["peak_rss_gb"] for g in got]}


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

    # the reference build in one process, and what two independent processes (no dask, each with half
    # of the files) reach on this machine: the ceiling for any scheduler.
    reference = None
    if not args.no_processes:
        single = _processes(model_dir, [files], tmp, "single")
        out["one_process"] = single
        reference = sg.Atlas(tmp / "single_0")
        print(
            f"one process, 1 thread: {single['cells_per_s']:7.1f} cells/s, peak RSS {single['peak_rss_gb'][0]:.2f} GB"
        )
    if not args.no_processes and args.datasets % 2 == 0:
        half = args.datasets // 2
        pair = _processes(model_dir, [files[:half], files[half:]], tmp, "pair")
        out["two_independent_processes"] = pair
        out["ceiling_2_over_1"] = pair["cells_per_s"] / single["cells_per_s"]
        print(
            f"two independent processes, 1 thread each: {pair['cells_per_s']:7.1f} cells/s "
            f"({out['ceiling_2_over_1']:.2f}x one process: the machine's own ceiling)",
            flush=True,
        )

    settings = [("blocks", None)]
    if args.per_dataset:
        settings.append(("one task per dataset", 1 << 40))
    for workers in args.workers:
        with (
            distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit=None
            ) as lc,
            distributed.Client(lc) as client,
        ):
            client.run(_warm_up, str(model_dir), str(files[0]))
            threads = client.submit(_thread_counts, pure=False).result()
            start = time.perf_counter()
            client.scatter(model, broadcast=True)
            broadcast = time.perf_counter() - start
            for label, per_task in settings:
                atlas = sg.Atlas.create(tmp / f"cluster_{workers}_{per_task}", gene_order=model.gene_order)
                start = time.perf_counter()
                atlas.attribute([str(f) for f in files], model, client=client, cells_per_task=per_task, progress=False)
                seconds = time.perf_counter() - start
                rss = sorted(client.run(peak_rss_gb).values())  # each worker's own peak so far
                row = {"seconds": seconds, "cells_per_s": total / seconds, "worker_peak_rss_gb": rss}
                row["max_abs_diff_to_one_process"] = _max_diff(atlas, reference) if reference is not None else None
                row |= {"model_broadcast_seconds": broadcast, "task_threads": threads}
                out[f"workers_{workers}_{label.replace(' ', '_')}"] = row
                print(
                    f"LocalCluster, {workers} worker(s) x 1 thread, {label}: {row['cells_per_s']:7.1f} cells/s, "
                    f"worker peak RSS {', '.join(f'{r:.2f}' for r in rss)} GB, max |diff| to one process "
                    f"{row['max_abs_diff_to_one_process']}; model broadcast {broadcast:.1f} s; threads in a task "
                    f"{threads}",
                    flush=True,
                )
    for label, _ in settings:
        one, two = (out.get(f"workers_{w}_{label.replace(' ', '_')}") for w in (1, 2))
        if one and two:
            out[f"speedup_2_over_1_{label.replace(' ', '_')}"] = ratio = two["cells_per_s"] / one["cells_per_s"]
            print(f"2 workers / 1 worker, {label}: {ratio:.2f}x", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["stream", "cluster"], default="stream")
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 40_000], help="sizes for --mode stream")
    parser.add_argument("--datasets", type=int, default=4, help="files for --mode cluster")
    parser.add_argument("--dataset-cells", type=int, default=2_000, help="cells per file for --mode cluster")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="LocalCluster sizes")
    parser.add_argument(
        "--no-processes", action="store_true", help="skip the one-process and two-process runs (no value check)"
    )
    parser.add_argument(
        "--per-dataset", action="store_true", help="also measure one task per dataset (no blocks of cells)"
    )
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
