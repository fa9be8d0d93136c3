"""Attribution speed and memory: ``sg.tl.attribute`` against the reference package on the same model and cells.

Builds a SCimilarity-format folder with random weights and non-trivial BatchNorm statistics at the real
shape (28,231 genes -> 1024 -> 1024 -> 128) and synthetic raw counts with about 2,100 expressed genes per
cell, then, one after the other in separate processes on the same cores:

- the reference (``sc-signature``, import ``SIGnature``, run with ``--ref-python``):
  ``SCimilarityWrapper(folder).calculate_attributions(X, method="ig", batch_size=b)`` on the
  log-normalized cells, once per ``--ref-batch-sizes`` value (default 50, 100, 200 and 500, its own
  default), each in a fresh, warmed process;
- scsig: ``sg.tl.attribute(adata, folder_model, method="ig")`` on the raw counts (it normalizes them itself).

Each side first runs a few warm-up cells (numba's kernel cache, captum's first call), then the timed run;
scsig's takes about a second for 1,000 cells, so it runs ``--repeats`` times (default 5) and its median counts.
Prints cells/s and peak RSS of scsig and of the reference at each batch size, scsig's ratio against the
reference's default batch size and against its fastest one, and the largest differences between scsig's
output and the reference's at its default (row-L1 relative, and elementwise relative on entries above 1e-3
of the row maximum). The fair figure is the ratio against the reference's fastest setting: how fast the
reference runs at a batch size depends on the machine's memory (its default of 500 cells allocates about 9 GB).

``--mode backends`` times the scvi-tools and scTab-SSL backends instead (``attribution_backends.py``).

``--mode rss`` instead writes ``--rss-cells`` cells (default 100,000) to an .h5ad and measures the peak RSS and
time of ``sg.tl.attribute`` on it opened with ``backed="r"`` (the layer itself, CSR in memory, is part of it).

    python benchmarks/attribution.py --cells 1000
    python benchmarks/attribution.py --mode rss --rss-cells 100000
    python benchmarks/attribution.py --mode backends --cells 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _counts import N_GENES, synthetic_counts

HIDDEN, LATENT = (1024, 1024), 128

REFERENCE = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np, scipy.sparse as sp, torch
    torch.set_num_threads(int(sys.argv[4]))
    from SIGnature.models.scimilarity import SCimilarityWrapper
    folder, x_path, out = sys.argv[1:4]
    batch_size = int(sys.argv[5])
    x = sp.load_npz(x_path).tocsr()
    wrapper = SCimilarityWrapper(folder)
    wrapper.calculate_attributions(x[:20], method="ig", disable_tqdm=True, batch_size=batch_size)
    start = time.perf_counter()
    attr = wrapper.calculate_attributions(x, method="ig", disable_tqdm=True, batch_size=batch_size)
    seconds = time.perf_counter() - start
    sp.save_npz(out, sp.csr_matrix(attr))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": seconds, "peak_rss_gb": rss, "threads": torch.get_num_threads()}))
    """
)

SCSIG = textwrap.dedent(
    """
    import json, resource, sys, time
    import anndata as ad, numpy as np, scipy.sparse as sp
    import scsig as sg
    folder, h5ad, out, threads, backed = sys.argv[1:6]
    sg.settings.n_jobs = int(threads)
    sg.settings.progress = False
    model = sg.models.load(folder)
    adata = ad.read_h5ad(h5ad, backed="r" if backed == "1" else None)
    warm = ad.AnnData(adata.X[:20] if backed != "1" else adata.X[0:20], var=adata.var.copy())
    sg.tl.attribute(warm, model, method="ig")
    profile = {}
    if len(sys.argv) > 6 and sys.argv[6] == "1":  # time the stages: kernels, the whole engine call
        import scsig.attribution as attribution
        import scsig.attribution._engine as engine
        import scsig.attribution._kernels as kernels
        import scsig.tl._attribute_batches as batches

        def timed(name, f):
            def g(*a, **k):
                t = time.perf_counter()
                r = f(*a, **k)
                profile[name] = profile.get(name, 0.0) + time.perf_counter() - t
                return r
            return g

        for name in kernels.__all__:
            setattr(kernels, name, timed("kernel " + name, getattr(kernels, name)))
        # the batch loop imports compute_batch and normalize_rows at each batch, model_input at module level
        engine.compute_batch = timed("engine total (kernels + torch products)", engine.compute_batch)
        batches.model_input = timed("align + normalize input", batches.model_input)
        attribution.normalize_rows = timed("normalize output rows", attribution.normalize_rows)
    repeats = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    times = []
    for _ in range(repeats):  # the same cells each time; the median is the figure
        adata.layers.pop("attr_ig", None)
        start = time.perf_counter()
        sg.tl.attribute(adata, model, method="ig")
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    layer = adata.layers["attr_ig"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if out != "-":
        sp.save_npz(out, layer)
    engine = adata.uns["scsig"]["layers"]["attr_ig"]["engine"]
    print(json.dumps({"seconds": seconds, "times": times, "peak_rss_gb": rss, "engine": engine, "nnz": int(layer.nnz), "profile": profile}))
    """
)


def build_model_folder(folder: Path, seed: int = 0) -> list[str]:
    """A SCimilarity-format folder with random weights and non-trivial BatchNorm statistics."""
    import torch

    from scsig.datasets._toy import randomize_batchnorm
    from scsig.models import FoundationModel, SCimilarityEncoder

    genes = [f"GENE{i:05d}" for i in range(N_GENES)]
    torch.manual_seed(seed)
    enc = SCimilarityEncoder(N_GENES, HIDDEN, LATENT)
    randomize_batchnorm(enc, prelu=True)
    FoundationModel(enc, genes, name="bench", labels={0: "a", 1: "b"}).save(folder)
    return genes


def write_h5ad(path: Path, counts: sp.csr_matrix, genes: list[str]) -> None:
    import anndata as ad

    obs = pd.DataFrame(index=[f"cell{i}" for i in range(counts.shape[0])])
    ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)


def write_h5ad_chunked(path: Path, n_cells: int, genes: list[str], unique: int = 5000) -> int:
    """Write ``n_cells`` cells (``unique`` distinct ones, repeated) without holding them in memory."""
    import anndata as ad
    import h5py
    from anndata.io import sparse_dataset, write_elem

    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    ad.AnnData(obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    base = synthetic_counts(unique, seed=1)
    with h5py.File(path, "r+") as f:
        if "X" in f:
            del f["X"]
        written = 0
        while written < n_cells:
            n = min(unique, n_cells - written)
            block = base[:n]
            if written == 0:
                write_elem(f, "X", block)
            else:
                sparse_dataset(f["X"]).append(block)
            written += n
    return int(base.nnz * (n_cells / unique))


def run_json(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-4000:])
        msg = f"{cmd[0]} failed with exit code {res.returncode}"
        raise RuntimeError(msg)
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, tmp: Path) -> int:
    import scsig as sg

    folder = tmp / "model"
    genes = build_model_folder(folder)
    counts = synthetic_counts(args.cells)
    nnz_per_cell = counts.nnz / counts.shape[0]
    h5ad = tmp / "counts.h5ad"
    write_h5ad(h5ad, counts, genes)
    model = sg.models.load(folder)
    import anndata as ad

    x = sg.pp.prepare(ad.AnnData(counts, var=pd.DataFrame(index=genes)), model).X
    x_path = tmp / "x.npz"
    sp.save_npz(x_path, sp.csr_matrix(x))
    del x, counts

    print(f"{args.cells} cells, {nnz_per_cell:.0f} expressed genes per cell, model {N_GENES}->{HIDDEN}->{LATENT}")
    print(f"threads: {args.threads}; machine load average before: {os.getloadavg()[0]:.1f}")
    ours = run_json(
        [sys.executable, "-c", SCSIG, str(folder), str(h5ad), str(tmp / "ours.npz"), str(args.threads), "0"]
        + ["1" if args.profile else "0", str(args.repeats)],
        args.threads,
    )
    ours_rate = args.cells / ours["seconds"]
    spread = ", ".join(f"{args.cells / t:.0f}" for t in ours["times"])
    print(
        f"scsig     : {ours_rate:8.1f} cells/s  (median of {len(ours['times'])} runs of {ours['seconds']:.2f} s: {spread} cells/s; "
        f"engine {ours['engine']}, peak RSS {ours['peak_rss_gb']:.2f} GB)"
    )
    if ours.get("profile"):
        print("scsig profile (seconds over the timed run):")
        for name, sec in sorted(ours["profile"].items(), key=lambda kv: -kv[1]):
            print(f"    {name:45s} {sec:7.2f}")
    if args.skip_reference:
        return 0
    rates = _reference_sweep(args, folder, x_path, tmp)
    default = REFERENCE_DEFAULT_BATCH if REFERENCE_DEFAULT_BATCH in rates else max(rates)
    fastest = max(rates, key=rates.get)
    print(f"ratio against the reference's default (batch_size={default}): {ours_rate / rates[default]:8.1f}x")
    print(f"ratio against the reference's fastest (batch_size={fastest}): {ours_rate / rates[fastest]:8.1f}x")
    _print_differences(tmp / "ours.npz", tmp / f"ref{default}.npz")
    print(
        f"machine load average after: {os.getloadavg()[0]:.1f} (the machine may be shared: compare ratios, not times)"
    )
    return 0


REFERENCE_DEFAULT_BATCH = 500
"""``SCimilarityWrapper.calculate_attributions``' own default batch size in sc-signature 1.0.0."""


def _reference_sweep(args: argparse.Namespace, folder: Path, x_path: Path, tmp: Path) -> dict[int, float]:
    """Cells/s of the reference at each ``--ref-batch-sizes`` value, each in its own warmed process."""
    rates = {}
    for batch in args.ref_batch_sizes:
        out = tmp / f"ref{batch}.npz"
        ref = run_json(
            [args.ref_python, "-c", REFERENCE, str(folder), str(x_path), str(out), str(args.threads), str(batch)],
            args.threads,
        )
        rates[batch] = args.cells / ref["seconds"]
        print(
            f"reference : {rates[batch]:8.1f} cells/s  at batch_size={batch:<4d} "
            f"({ref['seconds']:.1f} s, peak RSS {ref['peak_rss_gb']:.2f} GB)"
        )
    return rates


def _print_differences(ours_path: Path, ref_path: Path) -> None:
    a = sp.load_npz(ours_path).tocsr().astype(np.float64)
    b = sp.load_npz(ref_path).tocsr().astype(np.float64)
    diff = abs(a - b)
    row_l1 = np.asarray(diff.sum(1)).ravel() / np.maximum(np.asarray(abs(b).sum(1)).ravel(), 1e-300)
    b = b.tocoo()
    row_max = np.asarray(abs(b).max(axis=1).todense()).ravel()
    big = np.abs(b.data) > 1e-3 * row_max[b.row]
    elem = np.abs(np.asarray(a[b.row[big], b.col[big]]).ravel() - b.data[big]) / np.abs(b.data[big])
    print(f"row L1 relative difference: max {row_l1.max():.2e}, median {np.median(row_l1):.2e}")
    print(f"elementwise relative difference (entries > 1e-3 of row max): max {elem.max():.2e}")


def rss(args: argparse.Namespace, tmp: Path) -> int:
    folder = tmp / "model"
    genes = build_model_folder(folder)
    h5ad = tmp / "big.h5ad"
    start = time.perf_counter()
    nnz = write_h5ad_chunked(h5ad, args.rss_cells, genes)
    print(
        f"wrote {args.rss_cells} cells ({nnz / args.rss_cells:.0f} expressed genes per cell, {h5ad.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s"
    )
    ours = run_json([sys.executable, "-c", SCSIG, str(folder), str(h5ad), "-", str(args.threads), "1"], args.threads)
    layer_gb = ours["nnz"] * 8 / 1e9
    print(
        f"scsig on backed h5ad: {args.rss_cells / ours['seconds']:.1f} cells/s ({ours['seconds']:.0f} s), "
        f"peak RSS {ours['peak_rss_gb']:.2f} GB (of which the CSR layer held in memory: {layer_gb:.2f} GB)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["compare", "rss", "backends"], default="compare")
    parser.add_argument("--cells", type=int, default=1000, help="cells for the speed comparison")
    parser.add_argument("--rss-cells", type=int, default=100_000, help="cells for --mode rss")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ref-python",
        default=str(Path(__file__).resolve().parents[2] / "refvenv" / "bin" / "python"),
        help="python with sc-signature==1.0.0",
    )
    parser.add_argument("--skip-reference", action="store_true", help="time scsig only")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed scsig runs on the same cells (about 1 s each); the median counts"
    )
    parser.add_argument(
        "--ref-batch-sizes",
        type=int,
        nargs="+",
        default=[50, 100, 200, REFERENCE_DEFAULT_BATCH],
        help="the reference's batch sizes to time (each in its own process)",
    )
    parser.add_argument("--profile", action="store_true", help="also print where scsig's time goes")
    parser.add_argument("--workdir", default=None, help="where to write the model and data (default: a temp dir)")
    parser.add_argument("--scvi-layers", type=int, nargs="*", default=[1, 2], help="--mode backends: scVI depths")
    parser.add_argument(
        "--captum-batch-sizes",
        type=int,
        nargs="+",
        default=[50, 100, 200, 500],
        help="--mode backends: cells per captum call to sweep (the ratio is against the fastest)",
    )
    args = parser.parse_args()
    if args.mode == "backends":  # scvi-tools and scTab-SSL models: fast path vs captum (attribution_backends.py)
        from attribution_backends import run

        return run(args)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        if args.mode == "rss":
            return rss(args, Path(tmp))
        return compare(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
