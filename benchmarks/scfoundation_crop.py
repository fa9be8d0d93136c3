"""What the reference tool's crop to the first 512 expressed genes (gene-list order) does on the bundled Kang cells.

The SIGnature reference tool feeds scFoundation each cell's first 512 expressed genes in the order of
scFoundation's gene list; scsig's default embeds every expressed gene (``crop="first_512"`` reproduces the
reference). scFoundation's published list (``OS_scRNA_gene_index.19264.tsv``: protein-coding and
mitochondrial genes) is not bundled, so this script builds a stand-in over the Kang genes with the same
ordering rule:

- genes (a proxy for "protein-coding and mitochondrial"): with ``--genes symbols`` (default) the Kang genes
  whose names are gene symbols rather than clone-based or non-coding names (``RP11-...``, ``AC012345.1``,
  ``LINC...``, ``MIR...``, ``SNOR...``, ``...-AS1``; see ``NONCODING``); with ``--genes orthologs`` the Kang
  genes that are human genes of a bundled human-mouse ortholog table, plus the ``MT-`` genes (this misses
  the human-specific IFI6 and genes the data names by older symbols, e.g. ATP5A1); ``--genes all`` keeps
  every Kang gene,
- order: sorted by symbol (Python's ``sorted``, i.e. by code point: digits and ``-`` before letters).

It reports, per condition (STIM / CTRL):

1. the cells with more than 512 expressed genes in that gene space and how many genes the crop drops
   (counts only: independent of the model's weights), and which genes it drops most often (the genes late in
   the list), with interferon-stimulated genes listed separately;
2. with a random-weight scFoundation of the published architecture at a small size (``--dim``, ``--depth``,
   ``--heads``; no real weights here) attributed with scsig's default (all genes, integrated gradients, 50
   steps, self-similarity) on ``--cells`` cells: the share of each cell's attribution that falls on the genes the crop drops, i.e.
   what the crop zeroes. This share depends on the weights (one number per ``--seeds`` value); a trained
   model can put more or less weight on late-alphabet genes.

    python benchmarks/scfoundation_crop.py                          # 40 cells (20 STIM, 20 CTRL), seeds 0 1
    python benchmarks/scfoundation_crop.py --cells 832 --seeds 0    # all cells
"""

from __future__ import annotations

import argparse
import re
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import sparse

if TYPE_CHECKING:
    import pandas as pd

ISGS = (
    "ISG15",
    "IFI6",
    "IFIT1",
    "IFIT2",
    "IFIT3",
    "MX1",
    "ISG20",
    "IFITM3",
    "OAS1",
    "LY6E",
    "IFI44L",
    "RSAD2",
    "STAT1",
)
"""The 12 interferon-stimulated genes of the data's README sanity check, and STAT1."""

CROP = 512


NONCODING = re.compile(
    r"^(RP\d+-|RP[LS]\d+[A-Z]?\d*P\d+|A[CLPF]\d{6}|CT[ABCD]-|CTC-|CTD-|KB-|XX|LL\d|LINC\d|MIR\d|SNOR[AD]|LOC\d)"
    r"|\.\d+$|-AS\d|-IT\d|-OT\d"
)
"""Names that are not protein-coding gene symbols: clone-based names, lncRNAs, microRNAs, snoRNAs, antisense."""


def gene_space(var_names: pd.Index, rule: str) -> list[str]:
    """The stand-in gene list (see the module docstring), sorted by symbol."""
    import scsig as sg

    names = [str(g) for g in var_names]
    if rule == "symbols":
        names = [g for g in names if not NONCODING.search(g)]
    elif rule == "orthologs":
        human = set(sg.models.orthologs("human", "mouse")["source"].astype(str))
        names = [g for g in names if g in human or g.startswith("MT-")]
    return sorted(set(names))


def first_512_dropped(x: sparse.csr_matrix) -> sparse.csr_matrix:
    """Per cell (rows of ``x``, columns in list order), the expressed genes after the first 512: a 0/1 CSR matrix."""
    x = sparse.csr_matrix(x)
    x.sort_indices()
    rows, cols = [], []
    for i in range(x.shape[0]):
        idx = x.indices[x.indptr[i] : x.indptr[i + 1]][x.data[x.indptr[i] : x.indptr[i + 1]] > 0]
        cols.append(idx[CROP:])
        rows.append(np.full(max(idx.size - CROP, 0), i))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    return sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=x.shape)


def model(genes: list[str], *, dim: int, depth: int, heads: int, seed: int, crop: str = "most_expressed"):
    """A random-weight scFoundation encoder (the published architecture) over ``genes``; every expressed gene a token."""
    from scsig.models import FoundationModel, Preprocessing
    from scsig.models._scfoundation import ScFoundationEncoder

    torch.manual_seed(seed)
    n = len(genes)
    enc = ScFoundationEncoder(
        n_genes=n, dim=dim, depth=depth, heads=heads, bin_num=100, bin_alpha=1.0, seq_len=n + 2, crop=crop
    )
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p)) if name.endswith("weight") else p.normal_(0, 0.1)
            else:
                p.normal_(0, 0.5 / max(p.shape[-1], 1) ** 0.5)
    recipe = Preprocessing(target_sum=None, log1p=False, requires_counts=True)
    return FoundationModel(enc.eval(), genes, preprocessing=recipe, name=f"random-scfoundation-{seed}")


def counts_report(adata, dropped: sparse.csr_matrix, genes: list[str], top: int) -> None:
    """Cells over 512 genes, genes dropped per cell and the genes dropped most often, by condition."""
    n_expr = np.diff(adata.X.indptr)
    n_drop = np.asarray(dropped.sum(axis=1)).ravel().astype(np.int64)
    print(f"gene space: {len(genes):,} genes; cells: {adata.n_obs}")
    logn = adata.X.multiply(1e4 / np.maximum(adata.X.sum(axis=1), 1)).tocsr().log1p()
    expr_lost = np.asarray(logn.multiply(dropped).sum(axis=1)).ravel() / np.asarray(logn.sum(axis=1)).ravel()
    print("condition  cells  >512 genes  median expressed  median dropped  max dropped  median log1p CP10k dropped")
    for cond in ("STIM", "CTRL"):
        m = (adata.obs["stim"] == cond).to_numpy()
        print(
            f"{cond:9s} {m.sum():6d}  {(n_expr[m] > CROP).mean():10.1%}  {np.median(n_expr[m]):16.0f}"
            f"  {np.median(n_drop[m]):14.0f}  {n_drop[m].max():11d}  {np.median(expr_lost[m]):26.1%}"
        )
    expressed = adata.X > 0
    for cond in ("STIM", "CTRL"):
        m = (adata.obs["stim"] == cond).to_numpy()
        freq = np.asarray(dropped[m].sum(axis=0)).ravel() / m.sum()
        order = np.argsort(-freq, kind="stable")[:top]
        listed = ", ".join(f"{genes[j]} {freq[j]:.0%}" for j in order)
        print(f"{cond}: genes dropped in the most cells (share of the condition's cells): {listed}")
        have = [g for g in ISGS if g in genes]
        pos = {g: i for i, g in enumerate(genes)}
        parts = []
        for g in have:
            j = pos[g]
            n_exp = int(expressed[m][:, j].sum())
            n_dr = int(dropped[m][:, j].sum())
            parts.append(f"{g} {n_dr}/{n_exp}")
        print(f"{cond}: interferon genes dropped / expressed (cells): {', '.join(parts)}")


def attribution_report(adata, dropped: sparse.csr_matrix, genes: list[str], args: argparse.Namespace) -> None:
    """The share of each cell's default attribution on the genes the crop drops, per weight seed."""
    import scsig as sg

    rng = np.random.default_rng(0)
    picks = []
    for cond in ("STIM", "CTRL"):
        idx = np.flatnonzero((adata.obs["stim"] == cond).to_numpy())
        picks.append(np.sort(rng.choice(idx, size=min(args.cells // 2, idx.size), replace=False)))
    cells = np.concatenate(picks)
    sub = adata[cells].copy()
    is_isg = np.isin(np.asarray(genes), ISGS)
    for seed in args.seeds:
        fm = model(genes, dim=args.dim, depth=args.depth, heads=args.heads, seed=seed)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # completeness gaps of random weights, reported below
            sg.tl.attribute(sub, fm, key_added=f"attr_{seed}", n_steps=args.steps, progress=False)
        took = time.perf_counter() - start
        attr = sparse.csr_matrix(sub.layers[f"attr_{seed}"]) / 1000.0
        lost = np.asarray(attr.multiply(dropped[cells]).sum(axis=1)).ravel()
        isg_all = np.asarray(attr[:, is_isg].sum(axis=1)).ravel()
        isg_lost = np.asarray(attr.multiply(dropped[cells])[:, is_isg].sum(axis=1)).ravel()
        gap = sub.uns["scsig"]["layers"][f"attr_{seed}"]["completeness_gap"]
        print(
            f"seed {seed} (dim {args.dim}, depth {args.depth}, {took / len(cells):.2f} s per cell, completeness gap "
            f"median {gap['median']:.2%}):"
        )
        for cond in ("STIM", "CTRL"):
            m = (sub.obs["stim"] == cond).to_numpy()
            q = np.quantile(lost[m], [0.1, 0.5, 0.9])
            print(
                f"  {cond}: share of the attribution on the dropped genes: median {q[1]:.1%} (10-90 %: {q[0]:.1%}-{q[2]:.1%});"
                f" interferon genes' share {isg_all[m].mean():.2%}, of it on dropped genes {isg_lost[m].sum() / max(isg_all[m].sum(), 1e-12):.0%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genes", choices=["symbols", "orthologs", "all"], default="symbols")
    parser.add_argument("--cells", type=int, default=40, help="cells attributed (half STIM, half CTRL)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=50, help="integrated gradients' steps")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import scsig as sg

    sg.settings.n_jobs = args.threads
    kang = sg.datasets.kang_ifnb()
    genes = gene_space(kang.var_names, args.genes)
    adata = kang[:, genes].copy()  # columns in list order
    adata.X = sparse.csr_matrix(adata.X)
    dropped = first_512_dropped(adata.X)
    # the same genes as scsig's own crop="first_512" (what load_scfoundation(..., crop="first_512") runs)
    kept, _, _, n_dropped = model(genes, dim=8, depth=1, heads=2, seed=0, crop="first_512").encoder.tokenize(adata.X)
    if not np.array_equal(n_dropped, np.asarray(dropped.sum(axis=1)).ravel()) or any(
        np.intersect1d(k, dropped[i].indices).size for i, k in enumerate(kept)
    ):
        msg = "first_512_dropped disagrees with ScFoundationEncoder(crop='first_512')"
        raise AssertionError(msg)
    counts_report(adata, dropped, genes, args.top)
    if args.cells > 0:
        attribution_report(adata, dropped, genes, args)


if __name__ == "__main__":
    main()
