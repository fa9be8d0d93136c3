"""Does the attribution score find the biology and resist sequencing depth? Measured on real data.

For each bundled real dataset (sg.datasets.kang_ifnb, kang_muscat, pbmc3k) and each model (the bundled demo model, and an encoder trained here,
self-supervised, on the same cells), integrated-gradient attributions are scored with
:func:`scsig.tl.compare_scores` next to ``sc.tl.score_genes``, UCell and AUCell:

1. interferon response: AUROC STIM vs CTRL, pooled and within each cell type (both Kang subsets);
2. cell-type markers: AUROC of the target type against all other cells, for standard PBMC marker
   signatures (labels from the data; pbmc3k's are derived by clustering, see ``pbmc3k_labels``);
3. depth confound: |Spearman| of score and total counts within each cell type (and within condition),
   and how far each score moves when half of the cells are thinned to 50 % of their counts
   (binomial thinning), in standard deviations of that score within the cell's type.

Every number is printed and written to ``--out`` (CSV and markdown), with figures; nothing is tuned to
these data beyond the defaults a user would take. Run from the repository root:

    python benchmarks/validity.py --out docs/_static/validity
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

import scsig as sg
from scsig.tl._compare import SCORERS


ISG = ["ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "IFITM3", "OAS1", "LY6E", "IFI44L", "RSAD2"]
"""Interferon-stimulated genes (a common 12-gene interferon check)."""

MARKERS = {
    "B": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "CD22", "TCL1A"],
    "CD14 Mono": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1", "VCAN"],
    "CD16 Mono": ["FCGR3A", "MS4A7", "LST1", "CDKN1C", "RHOC"],
    "T": ["CD3D", "CD3E", "CD3G", "IL7R", "LEF1", "TCF7"],
    "CD8 T": ["CD8A", "CD8B"],
    "NK": ["GNLY", "NKG7", "KLRD1", "PRF1", "GZMB"],
}
"""Standard PBMC marker signatures (scored) per broad type."""

BROAD = {
    # kang_ifnb1k seurat_annotations
    "CD14 Mono": "CD14 Mono",
    "CD16 Mono": "CD16 Mono",
    "B": "B",
    "CD4 Naive T": "T",
    "CD4 Memory T": "T",
    "CD8 T": "T",
    # kang_muscat_example cluster_id
    "CD14+ Monocytes": "CD14 Mono",
    "FCGR3A+ Monocytes": "CD16 Mono",
    "B cells": "B",
    "CD4 T cells": "T",
    "CD8 T cells": "T",
}

LABEL_MARKERS = {
    "T": ["IL7R", "CCR7", "CD3D"],
    "CD8 T": ["CD8A"],
    "CD14 Mono": ["CD14", "LYZ"],
    "CD16 Mono": ["FCGR3A", "MS4A7"],
    "B": ["MS4A1"],
    "NK": ["GNLY", "NKG7"],
    "DC": ["FCER1A", "CST3"],
    "Platelet": ["PPBP"],
}
"""Markers used only to label pbmc3k's clusters (pbmc3k ships no labels)."""


def pbmc3k_labels(adata: ad.AnnData, seed: int = 0) -> pd.Series:
    """Reproducible labels: scanpy's standard clustering, each Leiden cluster named by its best marker set."""
    work = adata.copy()
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    sc.pp.highly_variable_genes(work, n_top_genes=2000)
    sc.pp.pca(work, n_comps=30, mask_var="highly_variable", random_state=seed)
    sc.pp.neighbors(work, random_state=seed)
    sc.tl.leiden(work, resolution=1.0, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    z = pd.DataFrame(index=work.obs_names)
    for name, genes in LABEL_MARKERS.items():
        present = [g for g in genes if g in work.var_names]
        z[name] = np.asarray(work[:, present].X.mean(1)).ravel()
    z = (z - z.mean()) / z.std()
    per_cluster = z.groupby(work.obs["leiden"].to_numpy()).mean()
    names = per_cluster.idxmax(axis=1)
    return pd.Series(work.obs["leiden"].map(names).astype(str).to_numpy(), index=adata.obs_names)


def load_datasets() -> dict[str, tuple[ad.AnnData, dict]]:
    out = {}
    kang = sg.datasets.kang_ifnb()
    kang.obs["celltype"] = kang.obs["seurat_annotations"].astype(str)
    kang.obs["broad"] = kang.obs["celltype"].map(BROAD)
    out["kang_ifnb1k"] = (kang, {"contrast": "stim", "positive": "STIM", "negative": "CTRL"})
    muscat = sg.datasets.kang_muscat()
    muscat.obs["celltype"] = muscat.obs["cluster_id"].astype(str)
    muscat.obs["broad"] = muscat.obs["celltype"].map(BROAD)
    out["kang_muscat_example"] = (muscat, {"contrast": "group_id", "positive": "stim", "negative": "ctrl"})
    pbmc = sg.datasets.pbmc3k()
    pbmc.obs["celltype"] = pbmc3k_labels(pbmc)
    pbmc.obs["broad"] = pbmc.obs["celltype"]
    out["pbmc3k"] = (pbmc, {})
    return out


def thin(adata: ad.AnnData, fraction: float = 0.5, seed: int = 0) -> tuple[ad.AnnData, np.ndarray]:
    """Binomial thinning of the counts of a random half of the cells."""
    rng = np.random.default_rng(seed)
    chosen = rng.random(adata.n_obs) < 0.5
    x = sparse.csr_matrix(adata.X, dtype=np.int64, copy=True)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    mask = chosen[rows]
    x.data[mask] = rng.binomial(x.data[mask], fraction)
    x.eliminate_zeros()
    out = ad.AnnData(X=x.astype(np.int32), obs=adata.obs.copy(), var=adata.var.copy())
    return out, chosen


def score_all(adata: ad.AnnData, model, signatures: dict[str, list[str]], contrasts: dict[str, dict], methods) -> dict:
    """compare_scores for every signature; returns {signature: table} and leaves scores in obs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-count cells after thinning, missing signature genes
        sg.tl.attribute(adata, model, progress=False)
    tables = {}
    for name, genes in signatures.items():
        tables[name] = sg.tl.compare_scores(
            adata, genes, methods=methods, key_added=f"cmp_{name}", groupby="celltype", **contrasts[name]
        )
    return tables


def depth_shift(orig: ad.AnnData, thinned: ad.AnnData, chosen: np.ndarray, key: str, methods) -> list[dict]:
    rows = []
    for m in methods:
        col = f"cmp_{key}_{m}"
        before, after = orig.obs[col].to_numpy(), thinned.obs[col].to_numpy()
        sd = orig.obs.groupby("celltype", observed=True)[col].transform("std").to_numpy()
        z = (after - before)[chosen] / np.where(sd[chosen] > 0, sd[chosen], np.nan)
        rows.append(
            {"method": m, "shift_sd_mean_abs": float(np.nanmean(np.abs(z))), "shift_sd_mean": float(np.nanmean(z))}
        )
    return rows


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    frame = table.reset_index()
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append(
            "| "
            + " | ".join("" if pd.isna(v) else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("validity_results"))
    parser.add_argument("--models", nargs="+", default=["pbmc-demo", "trained"])
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the locally trained encoders")
    parser.add_argument("--datasets", nargs="+", default=None, help="subset of kang_ifnb1k kang_muscat_example pbmc3k")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sg.settings.progress = False
    methods = [m for m, pkg in SCORERS.items() if pkg is None or importlib.util.find_spec(pkg) is not None]
    print(f"methods: {methods}")

    auroc_rows, shift_rows = [], []
    for dname, (adata, contrast) in load_datasets().items():
        if args.datasets and dname not in args.datasets:
            continue
        signatures, contrasts = {}, {}
        if contrast:
            signatures["interferon"] = ISG
            contrasts["interferon"] = contrast
        for broad, genes in MARKERS.items():
            if broad in set(adata.obs["broad"]) and broad != "CD8 T":
                signatures[f"marker_{broad}"] = genes
                contrasts[f"marker_{broad}"] = {"contrast": "broad", "positive": broad}
        for mname in args.models:
            t0 = time.perf_counter()
            if mname == "trained":
                # every detected gene, as a foundation model sees them (train_encoder's default is 2,000 HVGs)
                model = sg.models.train_encoder(
                    adata, n_top_genes=None, epochs=args.epochs, seed=0, progress=False, name=f"trained-{dname}"
                )
            else:
                model = sg.models.load(mname)
            orig = adata.copy()
            tables = score_all(orig, model, signatures, contrasts, methods)
            thinned, chosen = thin(adata)
            score_all(thinned, model, signatures, contrasts, methods)
            for sig, table in tables.items():
                table = table.assign(dataset=dname, model=mname, signature=sig)
                if sig == "interferon" or sig.startswith("marker_"):
                    auroc_rows.append(table)
                for r in depth_shift(orig, thinned, chosen, sig, methods):
                    shift_rows.append({"dataset": dname, "model": mname, "signature": sig, **r})
            print(f"{dname} / {mname}: {time.perf_counter() - t0:.0f} s", flush=True)

    auroc = pd.concat(auroc_rows, ignore_index=True)
    shifts = pd.DataFrame(shift_rows)
    auroc.to_csv(args.out / "scores.csv", index=False)
    shifts.to_csv(args.out / "thinning.csv", index=False)

    pd.set_option("display.width", 200)
    ifn = auroc[auroc.signature == "interferon"].pivot_table(
        index=["dataset", "model", "group"], columns="method", values="auroc"
    )
    markers = auroc[(auroc.signature != "interferon") & (auroc.group == "all")].pivot_table(
        index=["dataset", "model", "signature"], columns="method", values="auroc"
    )
    depth = auroc[auroc.group == "all"].pivot_table(
        index=["dataset", "model", "signature"], columns="method", values="depth_rho"
    )
    shift = shifts.pivot_table(index=["dataset", "model", "signature"], columns="method", values="shift_sd_mean_abs")
    sections = [
        ("1. Interferon response: AUROC STIM vs CTRL (pooled = all)", ifn),
        ("2. Cell-type markers: AUROC target type vs rest", markers),
        ("3a. Depth confound: mean within-type |Spearman| of score and total counts", depth),
        ("3b. Thinning half the cells to 50 %: mean |score change| of the thinned cells, in within-type SDs", shift),
    ]
    with (args.out / "tables.md").open("w") as fh:
        for title, table in sections:
            print(f"\n## {title}\n")
            print(table.round(3).to_string())
            fh.write(f"### {title}\n\n{table.round(3).pipe(markdown)}\n\n")
    summary = (
        auroc.groupby(["method"])[["auroc", "depth_rho"]]
        .mean()
        .join(shifts.groupby("method")["shift_sd_mean_abs"].mean())
    )
    print("\n## Means over every dataset, model, signature and group\n")
    print(summary.round(3).to_string())
    with (args.out / "tables.md").open("a") as fh:
        fh.write(f"### Means over every dataset, model, signature and group\n\n{summary.round(3).pipe(markdown)}\n")

    import matplotlib

    matplotlib.use("agg")
    for dname in auroc.dataset.unique():
        for mname in args.models:
            sub = auroc[(auroc.dataset == dname) & (auroc.model == mname) & (auroc.signature == "interferon")]
            if len(sub):
                fig = sg.pl.compare_scores(sub, return_fig=True)
                fig.suptitle(f"interferon signature, {dname}, {mname}", fontsize=9)
                fig.savefig(args.out / f"interferon_{dname}_{mname}.png", dpi=110, bbox_inches="tight")
    print(f"\nwrote {args.out}/scores.csv, thinning.csv, tables.md and figures")


if __name__ == "__main__":
    main()
