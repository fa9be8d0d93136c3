"""Time and peak memory of ``sg.tl.rank_genes_groups`` against ``sc.tl.rank_genes_groups(method="wilcoxon")``.

scsig ranks a synthetic attribution layer (sparse CSR, rows summing to 1,000); scanpy ranks the
log1p CP10k of synthetic integer counts with the same sparsity pattern in ``X``. Both run the
Wilcoxon rank-sum test of every group against the rest on all genes. The layer is built by
``benchmarks/score.py``'s generator (skewed gene popularity, ``--nnz-per-cell`` stored values per cell).
Peak memory is what :mod:`tracemalloc` sees allocated on top of the inputs during the call (numpy
and scipy allocations are traced).

    python benchmarks/rank_genes_groups.py [--cells 100000] [--genes 20000] [--nnz-per-cell 2000] [--groups 10] [--skip-scanpy] [--donors 0]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import scanpy as sc
from score import synthetic

import scsig as sg


def measure(fn) -> tuple[float, float]:
    """(seconds, peak MB allocated during ``fn``)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return elapsed, peak


def build(n_cells: int, n_genes: int, nnz: int, n_groups: int, n_donors: int) -> sc.AnnData:
    adata = synthetic(n_cells, n_genes, nnz)
    rng = np.random.default_rng(1)
    counts = adata.X  # same sparsity pattern as the layer; integer counts, then log1p CP10k (what scanpy ranks)
    counts.data = rng.poisson(2.0, counts.data.size).astype(np.float32) + 1
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.obs["group"] = pd.Categorical(rng.integers(0, n_groups, n_cells).astype(str))
    if n_donors:
        adata.obs["donor"] = pd.Categorical(rng.integers(0, n_donors, n_cells).astype(str))
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz-per-cell", type=int, default=2_000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--donors", type=int, default=0, help="also time the donor-aware test with this many donors")
    parser.add_argument("--skip-scanpy", action="store_true")
    args = parser.parse_args()
    sg.settings.progress = False
    t = time.perf_counter()
    adata = build(args.cells, args.genes, args.nnz_per_cell, args.groups, args.donors)
    layer = adata.layers["attr_ig"]
    print(
        f"{args.cells:,} cells x {args.genes:,} genes, {layer.nnz / args.cells:,.0f} stored values per cell, "
        f"{args.groups} groups (built in {time.perf_counter() - t:.0f} s; layer {(layer.data.nbytes + layer.indices.nbytes) / 1e9:.2f} GB)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secs, peak = measure(lambda: sg.tl.rank_genes_groups(adata, "group", method="wilcoxon"))
        print(f"sg.tl.rank_genes_groups(wilcoxon):  {secs:8.1f} s  peak {peak:8.0f} MB")
        if args.donors:
            secs, peak = measure(lambda: sg.tl.rank_genes_groups(adata, "group", sample_key="donor", key_added="donor"))
            print(f"sg.tl.rank_genes_groups(sample_key): {secs:7.1f} s  peak {peak:8.0f} MB")
        if not args.skip_scanpy:
            secs, peak = measure(lambda: sc.tl.rank_genes_groups(adata, "group", method="wilcoxon", use_raw=False))
            print(f"sc.tl.rank_genes_groups(wilcoxon):  {secs:8.1f} s  peak {peak:8.0f} MB")


if __name__ == "__main__":
    main()
