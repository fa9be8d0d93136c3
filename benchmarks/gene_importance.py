"""Gene importance: genes ranked by attribution against genes ranked by expression, on labelled real data.

``sg.tl.rank_genes_groups`` (Wilcoxon rank-sum on the attribution layer, the defaults) is compared with
``sc.tl.rank_genes_groups(method="wilcoxon")`` on log1p CP10k, on the same cells, the same groups and the
same genes: those of the dataset that the model has (genes outside the model get no attribution, so
both sides rank only the model's genes). Attributions: ``sg.models.load("pbmc-demo")`` with
``sg.tl.attribute``'s defaults (integrated gradients, the model's default target). Measures:

1. marker recovery: precision at 10, 20 and 50 (known markers among a group's first k genes, over k)
   for each cell type against the rest of the cells, with the marker lists below;
2. consistency across datasets: for a cell type (or the STIM vs CTRL contrast of a cell type) ranked
   in two datasets, over the genes both datasets and the model have, the overlap of the first 50 genes
   (shared genes among both top 50s, over 50) and the Spearman correlation of the genes' scores;
3. conditions: STIM vs CTRL within each cell type of both Kang subsets (``groups=["STIM"],
   reference="CTRL"``): interferon-stimulated genes among the first 20;
4. ``liao_bal``: T cells known by their receptor (V(D)J) against the rest, precision of T-cell markers.

Cells and labels: ``pbmc3k`` (labels by scanpy's clustering and a few markers, ``validity.pbmc3k_labels``;
``pbmc-demo`` was trained on these cells), ``kang_ifnb`` and ``kang_muscat`` (author labels; control
cells only for 1 and 2), ``pbmc68k_reduced`` (labels after sorted populations) and ``liao_bal``
(downloaded once, 37 MB). The marker and interferon lists were written down before anything was
measured and were not changed afterwards. Run from the repository root (about 2 minutes):

    python benchmarks/gene_importance.py --out docs/validity/genes
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scanpy as sc
from scipy.stats import spearmanr
from validity import ISG as ISG12
from validity import load_datasets, markdown

import scsig as sg

if TYPE_CHECKING:
    import anndata as ad

# Known markers per cell type, written down before measuring and not tuned afterwards. Each list is the
# union of the markers of the scanpy pbmc3k clustering tutorial (Wolf et al. 2018; e.g. IL7R, CD14, LYZ,
# MS4A1, CD8A, GNLY, NKG7, FCGR3A, MS4A7, FCER1A, CST3, PPBP) and the top markers of the matching
# cell types of Azimuth's human PBMC reference (Hao et al. 2021, level 1 and level 2 tables), leaving
# out generic genes of those tables (TPT1, TMSB10, PTPRC, NEAT1). Older symbols are listed beside the
# new ones where the datasets use them (SDPR for CAVIN2).
MARKERS = {
    "B": [
        "MS4A1", "CD79A", "CD79B", "CD19", "CD22", "BANK1", "TCL1A", "IGHM", "IGHD", "TNFRSF13B",
        "TNFRSF13C", "AIM2", "RALGPS2", "FCRLA", "VPREB3", "IL4R", "CXCR4",
    ],
    "CD14 Mono": ["CD14", "LYZ", "S100A8", "S100A9", "S100A12", "VCAN", "FCN1", "CTSS", "MNDA", "IL1B", "G0S2"],
    "CD16 Mono": ["FCGR3A", "MS4A7", "CDKN1C", "LST1", "RHOC", "HES4", "IFITM3", "AIF1", "IER5"],
    "CD4 T": [
        "IL7R", "CD4", "CCR7", "TCF7", "LEF1", "MAL", "LTB", "LDHB", "CD3D", "CD3E", "CD3G", "TRAC", "FHIT",
        "NOSIP", "PIK3IP1", "AQP3", "IL32", "ITGB1",
    ],
    "CD8 T": [
        "CD8A", "CD8B", "CD3D", "CD3E", "CD3G", "TRAC", "HCST", "CTSW", "LINC02446", "CCL5", "GZMK", "GZMH",
        "CST7", "S100B", "CRTAM", "RGS10",
    ],
    "NK": [
        "GNLY", "NKG7", "KLRD1", "KLRF1", "PRF1", "GZMB", "GZMA", "FCER1G", "TYROBP", "CD247", "CST7", "TRDC",
        "FGFBP2", "SPON2", "NCAM1",
    ],
    "DC": [
        "FCER1A", "CST3", "CD1C", "CLEC10A", "HLA-DQA1", "HLA-DQB1", "HLA-DPA1", "HLA-DPB1", "HLA-DRA",
        "HLA-DRB1", "HLA-DMA", "CD74", "CCDC88A", "LILRA4", "IL3RA", "PLD4", "SERPINF1",
    ],
    "Platelet": ["PPBP", "PF4", "NRGN", "GNG11", "CAVIN2", "SDPR", "TUBB1", "CLU", "RGS18", "GP9", "ITGA2B"],
    # T cells of any kind (liao_bal's receptor-positive cells): pan-T genes, the T-cell receptor constant
    # chains and the CD4/CD8 T markers above that are not shared with myeloid cells (no CD4).
    "T": [
        "CD3D", "CD3E", "CD3G", "CD2", "CD5", "CD6", "CD27", "CD28", "CD247", "LCK", "ITK", "TRAC", "TRBC1",
        "TRBC2", "IL7R", "CD8A", "CD8B", "TCF7", "LEF1", "CCR7",
    ],
}  # fmt: skip

# Interferon-stimulated genes: MSigDB Hallmark interferon alpha response (Liberzon et al. 2015, 97
# genes; WARS1 also as WARS, TENT5A also as FAM46A) and the 12-gene check of validity.py (adds IFI6, IFIT1).
HALLMARK_IFNA = [
    "ADAR", "B2M", "BATF2", "BST2", "C1S", "CASP1", "CASP8", "CCRL2", "CD47", "CD74", "CMPK2", "CMTR1", "CNP",
    "CSF1", "CXCL10", "CXCL11", "DDX60", "DHX58", "EIF2AK2", "ELF1", "EPSTI1", "GBP2", "GBP4", "GMPR", "HELZ2",
    "HERC6", "HLA-C", "IFI27", "IFI30", "IFI35", "IFI44", "IFI44L", "IFIH1", "IFIT2", "IFIT3", "IFITM1",
    "IFITM2", "IFITM3", "IL15", "IL4R", "IL7", "IRF1", "IRF2", "IRF7", "IRF9", "ISG15", "ISG20", "LAMP3",
    "LAP3", "LGALS3BP", "LPAR6", "LY6E", "MOV10", "MVB12A", "MX1", "NCOA7", "NMI", "NUB1", "OAS1", "OASL",
    "OGFR", "PARP12", "PARP14", "PARP9", "PLSCR1", "PNPT1", "PROCR", "PSMA3", "PSMB8", "PSMB9", "PSME1",
    "PSME2", "RIPK2", "RNF31", "RSAD2", "RTP4", "SAMD9", "SAMD9L", "SELL", "SLC25A28", "SP110", "STAT2",
    "TAP1", "TDRD7", "TENT5A", "TMEM140", "TRAFD1", "TRIM14", "TRIM21", "TRIM25", "TRIM26", "TRIM5", "TXNIP",
    "UBA7", "UBE2L6", "USP18", "WARS1",
]  # fmt: skip
ISG = sorted({*HALLMARK_IFNA, "WARS", "FAM46A", *ISG12})

TYPES = {
    # kang_ifnb seurat_annotations (also pbmc3k's labels from validity.pbmc3k_labels)
    "CD14 Mono": "CD14 Mono",
    "CD16 Mono": "CD16 Mono",
    "B": "B",
    "CD4 Naive T": "CD4 T",
    "CD4 Memory T": "CD4 T",
    "CD8 T": "CD8 T",
    # pbmc3k: the cluster best marked by IL7R, CCR7 and CD3D (CD8A marks its own clusters)
    "T": "CD4 T",
    "NK": "NK",
    "DC": "DC",
    "Platelet": "Platelet",
    # kang_muscat cluster_id
    "CD14+ Monocytes": "CD14 Mono",
    "FCGR3A+ Monocytes": "CD16 Mono",
    "B cells": "B",
    "CD4 T cells": "CD4 T",
    "CD8 T cells": "CD8 T",
    # pbmc68k_reduced bulk_labels
    "CD14+ Monocyte": "CD14 Mono",
    "CD19+ B": "B",
    "CD56+ NK": "NK",
    "CD8+ Cytotoxic T": "CD8 T",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
    "CD4+/CD25 T Reg": "CD4 T",
    "CD4+/CD45RO+ Memory": "CD4 T",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
    "Dendritic": "DC",
}
"""Each dataset's labels -> the cell types of ``MARKERS`` (other labels stay in the rest)."""

CONDITIONS = {"kang_ifnb": ("stim", "STIM", "CTRL"), "kang_muscat": ("group_id", "stim", "ctrl")}
"""Dataset -> (column, stimulated, control)."""

METHODS = ("attribution", "expression")
KS = (10, 20, 50)
MIN_CELLS = 10
SCSIG_KEY, SCANPY_KEY = "rank_genes_groups_scsig", "rank_genes_groups"


def attributed(name: str, adata: ad.AnnData, model) -> ad.AnnData:
    """The dataset over the genes it shares with the model: log1p CP10k in ``X``, attributions in a layer."""
    t0 = time.perf_counter()
    counts = adata.copy()
    sg.tl.attribute(counts, model)  # the defaults
    in_model = counts.var["attr_ig_in_model"].to_numpy()
    sc.pp.normalize_total(counts, target_sum=1e4)  # over every gene of the dataset, as a user would
    sc.pp.log1p(counts)
    out = counts[:, in_model].copy()
    out.obs["type"] = out.obs["celltype"].map(TYPES).fillna("other").astype(str)
    print(f"{name}: {out.n_obs} cells, {out.n_vars} genes shared with the model ({time.perf_counter() - t0:.0f} s)")
    return out


def rank(work: ad.AnnData, groupby: str, groups: list[str], reference: str) -> dict[str, dict[str, pd.Series]]:
    """{method: {group: gene scores, best first}}, both methods on the same cells, groups and genes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's performance warnings on fragmented frames
        sg.tl.rank_genes_groups(work, groupby, groups=groups, reference=reference, layer="attr_ig")
        sc.tl.rank_genes_groups(work, groupby, groups=groups, reference=reference, method="wilcoxon", use_raw=False)
    out: dict[str, dict[str, pd.Series]] = {}
    for method, key in zip(METHODS, (SCSIG_KEY, SCANPY_KEY), strict=True):
        out[method] = {}
        for g in groups:
            df = sc.get.rank_genes_groups_df(work, g, key=key)
            out[method][g] = pd.Series(df["scores"].to_numpy(float), index=df["names"].astype(str).to_numpy())
    return out


def top(work: ad.AnnData, group: str, method: str, k: int) -> list[str]:
    """A group's first ``k`` genes as ``sg.get.signature`` returns them (those with a positive score)."""
    key = SCSIG_KEY if method == "attribution" else SCANPY_KEY
    return list(sg.get.signature(work, group, key=key, n_genes=k, weighted=False).index)


def precision_rows(work: ad.AnnData, sizes: dict[str, int], markers: dict[str, str], meta: dict) -> list[dict]:
    """Precision at ``KS`` of each group's markers (``markers``: group -> name of its list in ``MARKERS``)."""
    rows = []
    for group, mname in markers.items():
        known = set(MARKERS[mname]) & set(work.var_names)
        if not known:  # no marker among the genes ranked (the model has none): nothing to measure
            print(f"{meta['dataset']}, {group}: none of its markers is among the ranked genes; left out")
            continue
        for method in METHODS:
            genes = top(work, group, method, max(KS))
            row = {**meta, "cell_type": group, "markers": mname, "method": method, "n_cells": sizes[group]}
            row |= {"n_markers_in_genes": len(known), "n_genes": work.n_vars}
            row |= {f"precision_at_{k}": len(known & set(genes[:k])) / k for k in KS}
            row["chance_precision"] = len(known) / work.n_vars
            row["top_20"] = " ".join(genes[:20])
            rows.append(row)
    return rows


def marker_recovery(data: dict[str, ad.AnnData]) -> tuple[list[dict], dict]:
    """Each cell type against the rest (Kang: control cells only); returns rows and the full rankings."""
    rows, rankings = [], {}
    for name, adata in data.items():
        if name == "liao_bal":
            continue
        cells = np.ones(adata.n_obs, bool)
        if name in CONDITIONS:
            col, _, ctrl = CONDITIONS[name]
            cells = (adata.obs[col].astype(str) == ctrl).to_numpy()
        work = adata[cells].copy()
        sizes = work.obs["type"].value_counts()
        groups = [t for t in MARKERS if sizes.get(t, 0) >= MIN_CELLS]
        ranked = rank(work, "type", groups, "rest")
        meta = {"dataset": name, "contrast": "type vs rest", "cells": "CTRL" if name in CONDITIONS else "all"}
        rows += precision_rows(work, {g: int(sizes[g]) for g in groups}, {g: g for g in groups}, meta)
        for method, per_group in ranked.items():
            for g, scores in per_group.items():
                rankings[name, "type vs rest", g, method] = scores
    return rows, rankings


def receptor_t_cells(adata: ad.AnnData) -> list[dict]:
    """liao_bal: cells with a productive T-cell receptor chain against the rest."""
    work = adata.copy()
    work.obs["tcr_group"] = np.where(work.obs["tcr"] != "none", "T (TCR)", "no TCR")
    rank(work, "tcr_group", ["T (TCR)"], "rest")
    n = int((work.obs["tcr_group"] == "T (TCR)").sum())
    meta = {"dataset": "liao_bal", "contrast": "TCR+ vs rest", "cells": "all"}
    return precision_rows(work, {"T (TCR)": n}, {"T (TCR)": "T"}, meta)


def conditions(data: dict[str, ad.AnnData]) -> tuple[list[dict], dict]:
    """STIM vs CTRL within each cell type: ISGs among the first 20 genes; returns rows and rankings."""
    rows, rankings = [], {}
    for name, (col, stim, ctrl) in CONDITIONS.items():
        if name not in data:
            continue
        adata = data[name]
        for ctype in MARKERS:
            work = adata[(adata.obs["type"] == ctype).to_numpy()].copy()
            sizes = work.obs[col].astype(str).value_counts()
            if min(sizes.get(stim, 0), sizes.get(ctrl, 0)) < MIN_CELLS:
                continue
            work.obs["condition"] = work.obs[col].astype(str).map({stim: "STIM", ctrl: "CTRL"})
            ranked = rank(work, "condition", ["STIM"], "CTRL")
            isg = set(ISG) & set(work.var_names)
            for method in METHODS:
                genes = top(work, "STIM", method, 20)
                rows.append(
                    {
                        "dataset": name,
                        "cell_type": ctype,
                        "method": method,
                        "n_stim": int(sizes[stim]),
                        "n_ctrl": int(sizes[ctrl]),
                        "isg_in_top_10": len(isg & set(genes[:10])),
                        "isg_in_top_20": len(isg & set(genes)),
                        "n_isg_in_genes": len(isg),
                        "n_genes": work.n_vars,
                        "chance_in_top_20": 20 * len(isg) / work.n_vars,
                        "top_10": " ".join(genes[:10]),
                    }
                )
                rankings[name, "STIM vs CTRL", ctype, method] = ranked[method]["STIM"]
    return rows, rankings


SAME_STUDY = {"kang_ifnb", "kang_muscat"}
"""Two subsets of one study (Kang et al. 2018, the same sequencing run)."""
TRAINING = {"pbmc3k"}
"""Datasets whose cells ``pbmc-demo`` was trained on."""


def pair_kind(d1: str, d2: str) -> str:
    if {d1, d2} <= SAME_STUDY:
        return "same study"
    if {d1, d2} & TRAINING:
        return "two studies, one the model's training cells"
    return "two studies, both held out"


def consistency(rankings: dict, n_top: int = 50) -> list[dict]:
    """The same cell type and contrast ranked in two datasets: top-``n_top`` overlap and Spearman over shared genes."""
    rows = []
    keys = sorted({(d, c, t) for d, c, t, _ in rankings})
    for (d1, c1, t1), (d2, c2, t2) in itertools.combinations(keys, 2):
        if (c1, t1) != (c2, t2):
            continue
        for method in METHODS:
            s1, s2 = rankings[d1, c1, t1, method], rankings[d2, c2, t2, method]
            shared = s1.index.intersection(s2.index)
            a, b = s1.loc[shared].sort_values(ascending=False), s2.loc[shared].sort_values(ascending=False)
            overlap = len(set(a.index[:n_top]) & set(b.index[:n_top])) / n_top
            rows.append(
                {
                    "pair": f"{d1} + {d2}",
                    "pair_kind": pair_kind(d1, d2),
                    "contrast": c1,
                    "cell_type": t1,
                    "method": method,
                    "n_shared_genes": int(shared.size),
                    f"top{n_top}_overlap": overlap,
                    "spearman": float(spearmanr(a.loc[shared], b.loc[shared]).statistic),
                }
            )
    return rows


def wide(frame: pd.DataFrame, index: list[str], values: list[str]) -> pd.DataFrame:
    """One row per ``index``, columns ``<value>`` of attribution next to expression."""
    table = frame.pivot_table(index=index, columns="method", values=values, sort=False)
    table.columns = [f"{v} ({m})" for v, m in table.columns]
    table = table[[f"{v} ({m})" for v in values for m in METHODS]]
    return table.astype(int) if (table.round() == table).all().all() else table


def wins(frame: pd.DataFrame, index: list[str], values: list[str]) -> pd.DataFrame:
    """For each measure: how often attribution is above, equal to or below expression."""
    table = frame.pivot_table(index=index, columns="method", values=values, sort=False)
    rows = {}
    for v in values:
        d = table[v, "attribution"] - table[v, "expression"]
        rows[v] = {"attribution higher": int((d > 1e-12).sum()), "tie": int((d.abs() <= 1e-12).sum())}
        rows[v]["expression higher"] = int((d < -1e-12).sum())
    return pd.DataFrame(rows).T.rename_axis("measure")


def write_tables(markers: pd.DataFrame, conds: pd.DataFrame, cons: pd.DataFrame, out: Path) -> None:
    p_cols = [f"precision_at_{k}" for k in KS]
    m_index = ["dataset", "cell_type", "n_cells", "n_markers_in_genes"]
    c_index = ["contrast", "cell_type", "pair", "n_shared_genes"]
    sections = [
        ("Marker recovery: precision at 10, 20 and 50 of known markers", wide(markers, m_index, p_cols)),
        (
            "Marker recovery: mean over cell types per dataset",
            wide(markers, ["dataset"], p_cols) if len(markers) else markers,
        ),
        ("Marker recovery: cell types where each method is ahead", wins(markers, m_index, p_cols)),
        (
            "Consistency across datasets: top-50 overlap and Spearman over shared genes",
            wide(cons, c_index, ["top50_overlap", "spearman"]),
        ),
        (
            "Consistency across datasets: mean over pairs and cell types",
            wide(cons, ["contrast", "pair_kind"], ["top50_overlap", "spearman"]),
        ),
        (
            "Consistency across datasets: pairs where each method is ahead",
            pd.concat(
                {kind: wins(part, c_index, ["top50_overlap", "spearman"]) for kind, part in cons.groupby("pair_kind")},
                names=["pair_kind"],
            ),
        ),
        (
            "Conditions: interferon-stimulated genes among the first 10 and 20 genes, STIM vs CTRL per cell type",
            wide(
                conds,
                ["dataset", "cell_type", "n_stim", "n_ctrl", "n_isg_in_genes"],
                ["isg_in_top_10", "isg_in_top_20"],
            ),
        ),
        (
            "Conditions: cell types where each method is ahead",
            wins(conds, ["dataset", "cell_type"], ["isg_in_top_10", "isg_in_top_20"]),
        ),
    ]
    with (out / "tables.md").open("w") as fh:
        for title, table in sections:
            print(f"\n## {title}\n")
            print(table.round(3).to_string())
            fh.write(f"### {title}\n\n{table.round(3).pipe(markdown)}\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gene_importance_results"))
    parser.add_argument("--model", default="pbmc-demo", help="model name or folder")
    names = ("pbmc3k", "kang_ifnb", "kang_muscat", "pbmc68k", "liao_bal")
    parser.add_argument("--datasets", nargs="+", default=list(names), choices=names)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sg.settings.progress = False
    model = sg.models.load(args.model)
    t0 = time.perf_counter()
    data = {name: attributed(name, adata, model) for name, (adata, _) in load_datasets(args.datasets).items()}
    marker_rows, rankings = marker_recovery(data)
    if "liao_bal" in data:
        marker_rows += receptor_t_cells(data["liao_bal"])
    cond_rows, cond_rankings = conditions(data)
    cons_rows = consistency(rankings | cond_rankings)
    markers, conds, cons = pd.DataFrame(marker_rows), pd.DataFrame(cond_rows), pd.DataFrame(cons_rows)
    markers.to_csv(args.out / "markers.csv", index=False)
    conds.to_csv(args.out / "conditions.csv", index=False)
    cons.to_csv(args.out / "consistency.csv", index=False)
    write_tables(markers, conds, cons, args.out)
    print(
        f"\nwrote {args.out}/markers.csv, conditions.csv, consistency.csv and tables.md ({time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
