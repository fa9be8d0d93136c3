"""Time ``Atlas.gene_importance`` (and ``gene_consensus``) on a synthetic atlas.

Builds an atlas of ``--datasets`` synthetic datasets of ``--cells`` cells each over ``--genes``
genes (about ``--nnz`` non-zero attributions per cell, drawn from a skewed gene frequency, every
row summing to 1,000; ``--groups`` cell types), then runs, each in a fresh subprocess (the OS file
cache is warm from the build): ``gene_importance("cell_type")`` over every gene of every dataset,
twice (the first run also imports and compiles its numba kernel and opens and checks the shards), and ``gene_consensus`` on its table; and, for
scale, ``score`` of 50 genes. Reports wall times and the peak resident memory of the query
process beyond what it held before the query (Linux: ``VmHWM`` after a reset, minus ``VmRSS``),
next to the size of one dataset's values.

Usage::

    python benchmarks/atlas_importance.py                         # 3 datasets x 20,000 cells
    python benchmarks/atlas_importance.py --cells 5000 --genes 5000 --nnz 500   # a quick run
    python benchmarks/atlas_importance.py --datasets 1 --cells 120000 --keep /tmp/big --n-jobs 1
    python benchmarks/atlas_importance.py --keep /tmp/big --n-jobs 1 --group-values 1000000   # reuses it
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic(n_cells: int, n_genes: int, nnz: int, n_groups: int, seed: int):
    """An AnnData with a synthetic ``attr_ig`` layer (no provenance) and a ``cell_type`` column."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    weight = 1.0 / np.arange(1, n_genes + 1) ** 0.7
    weight /= weight.sum()
    parts = []
    for lo in range(0, n_cells, 2000):
        n = min(2000, n_cells - lo)
        cols = rng.choice(n_genes, size=(n, int(nnz * 1.3)), p=weight)
        rows = np.repeat(np.arange(n), cols.shape[1])
        vals = rng.exponential(1.0, cols.size).astype(np.float32)
        block = sparse.csr_matrix((vals, (rows, cols.ravel())), shape=(n, n_genes))
        block.sum_duplicates()
        totals = np.asarray(block.sum(axis=1)).ravel()
        block.data *= np.repeat(1000.0 / totals, np.diff(block.indptr)).astype(np.float32)
        parts.append(block)
    x = sparse.vstack(parts, format="csr", dtype=np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice([f"type{k}" for k in range(n_groups)], n_cells))},
        index=[f"s{seed}_{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    adata.layers["attr_ig"] = x
    return adata


def build(path: Path, args: argparse.Namespace) -> dict:
    import scsig as sg

    atlas = sg.Atlas.create(path, gene_order=[f"G{i}" for i in range(args.genes)])
    t0 = time.perf_counter()
    nnz = []
    for k in range(args.datasets):
        adata = synthetic(args.cells, args.genes, args.nnz, args.groups, seed=k)
        nnz.append(int(adata.layers["attr_ig"].nnz))
        atlas.add(adata, name=f"d{k}", progress=False)
        del adata
    return {"build_s": time.perf_counter() - t0, "nnz_per_dataset": nnz}


def _status(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def query(path: str, n_jobs: int | None, group_values: int | None) -> dict:
    """Runs in its own process: the timings and the peak memory growth of the queries."""
    import warnings

    import scsig as sg
    from scsig.atlas import _store
    from scsig.atlas._store import release_memory

    warnings.simplefilter("ignore")
    sg.settings.n_jobs = n_jobs
    if group_values:
        _store.GROUP_VALUES = group_values
    atlas = sg.Atlas.open(path)
    atlas.obs()  # cell metadata in memory before the baseline
    out = {}
    for run in ("first", "again"):
        release_memory()  # freed memory back to the OS, so the baseline is what the process holds
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident memory
        base = _status("VmRSS")
        t0 = time.perf_counter()
        table = atlas.gene_importance("cell_type", progress=False)
        out[f"importance_{run}_s"] = time.perf_counter() - t0
        out[f"importance_{run}_peak_growth_mb"] = _status("VmHWM") - base
    out["rows"] = len(table)
    t0 = time.perf_counter()
    consensus = atlas.gene_consensus(table, n_top=50)
    out["consensus_s"] = time.perf_counter() - t0
    out["consensus_rows"] = len(consensus)
    out["table_mb"] = table.memory_usage(deep=True).sum() / 2**20
    genes = list(atlas.gene_order[:50])
    t0 = time.perf_counter()
    atlas.score(genes, progress=False)
    out["score_50_genes_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=28_231)
    parser.add_argument("--nnz", type=int, default=2_090)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--n-jobs", type=int, help="threads of the query (default: sg.settings.n_jobs)")
    parser.add_argument("--group-values", type=int, help="values per read group (default: GROUP_VALUES, 4M)")
    parser.add_argument("--keep", help="build the atlas in this folder, or reuse the atlas there")
    parser.add_argument("--query", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.query:
        print(json.dumps(query(args.query, args.n_jobs, args.group_values)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep or Path(tmp) / "atlas")
        if path.exists():
            import scsig as sg

            info = {"build_s": float("nan"), "nnz_per_dataset": sg.Atlas.open(path).summary()["nnz"].tolist()}
        else:
            info = build(path, args)
        cmd = [sys.executable, __file__, "--query", str(path)]
        for flag, value in (("--n-jobs", args.n_jobs), ("--group-values", args.group_values)):
            cmd += [flag, str(value)] if value else []
        run = subprocess.run(cmd, check=True, capture_output=True, text=True)
        info.update(json.loads(run.stdout.strip().splitlines()[-1]))
    info["dataset_values_mb"] = max(info["nnz_per_dataset"]) * 8 / 2**20  # float32 values + int32 rows
    info["setup"] = vars(args) | {"query": None}
    for key, value in info.items():
        print(f"{key:>32}: {value:.2f}" if isinstance(value, float) else f"{key:>32}: {value}")


if __name__ == "__main__":
    main()
