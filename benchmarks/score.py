"""Time ``sg.tl.score`` (``mode="classic"``, the default ``"cosine"`` and ``"top"``) against ``sc.tl.score_genes`` on 100k cells x 100 signature genes.

Both read a sparse CSR matrix of the same shape and density (synthetic, seeded): scsig reads an
attribution layer (rows summing to 1,000), scanpy the log-normalized expression it scores. Each is run
``--repeats`` times; the best time is reported, and the ratio.

    python benchmarks/score.py [--cells 100000] [--genes 20000] [--nnz-per-cell 2000]
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

import scsig as sg


def synthetic(n_cells: int, n_genes: int, nnz: int, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    # gene popularity follows a skewed distribution, like expression data
    p = rng.gamma(0.3, 1.0, n_genes)
    p /= p.sum()
    indptr = np.arange(0, (n_cells + 1) * nnz, nnz, dtype=np.int64)
    indices = np.empty(n_cells * nnz, dtype=np.int32)
    chunk = 5000
    for lo in range(0, n_cells, chunk):
        hi = min(lo + chunk, n_cells)
        keys = rng.random((hi - lo, n_genes)) ** (1.0 / (p * n_genes))  # weighted sampling without replacement
        top = np.argpartition(-keys, nnz, axis=1)[:, :nnz]
        indices[lo * nnz : hi * nnz] = np.sort(top, axis=1).ravel()
    data = rng.gamma(1.0, 1.0, n_cells * nnz).astype(np.float32)
    x = sparse.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    sums = np.asarray(x.sum(1)).ravel()
    x = sparse.diags((1000.0 / sums).astype(np.float32)) @ x
    adata = ad.AnnData(
        X=sparse.csr_matrix(x, dtype=np.float32), var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    )
    adata.layers["attr_ig"] = adata.X.copy()
    adata.uns["scsig"] = {"layers": {"attr_ig": {"method": "ig"}}}
    adata.X.data = np.log1p(adata.X.data)
    return adata


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=None, help="numba threads for sg.tl.score")
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--nnz-per-cell", type=int, default=2_000)
    parser.add_argument("--signature", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    t = time.perf_counter()
    adata = synthetic(args.cells, args.genes, args.nnz_per_cell)
    print(
        f"data: {adata.n_obs} cells x {adata.n_vars} genes, {adata.X.nnz:,} nonzeros ({time.perf_counter() - t:.1f} s to build)"
    )
    rng = np.random.default_rng(1)
    genes = list(adata.var_names[rng.choice(adata.n_vars, args.signature, replace=False)])

    t_sg = best(lambda: sg.tl.score(adata, genes, mode="classic"), args.repeats)
    t_cos = best(lambda: sg.tl.score(adata, genes, key_added="score_cosine"), args.repeats)  # the default, "cosine"
    t_top = best(lambda: sg.tl.score(adata, genes, mode="top", key_added="score_top"), args.repeats)
    t_sc = best(lambda: sc.tl.score_genes(adata, genes, random_state=0, score_name="score_genes"), args.repeats)
    print(f"sg.tl.score classic: {t_sg:.3f} s")
    print(f"sg.tl.score cosine : {t_cos:.3f} s (the default)")
    print(f"sg.tl.score top    : {t_top:.3f} s")
    print(f"sc.tl.score_genes  : {t_sc:.3f} s")
    print(f"speed-up           : classic {t_sc / t_sg:.1f}x, cosine {t_sc / t_cos:.1f}x, top {t_sc / t_top:.1f}x")

    dense = adata.layers["attr_ig"][:, [adata.var_names.get_loc(g) for g in genes]].toarray().mean(1)
    print(f"max |classic score - numpy mean| = {np.abs(adata.obs['score'].to_numpy() - dense).max():.2e}")


if __name__ == "__main__":
    main()
