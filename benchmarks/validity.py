"""Does the attribution score find the biology and resist sequencing depth? Measured on real data.

For each dataset (``sg.datasets.kang_ifnb``, ``kang_muscat``, ``pbmc3k``, ``pbmc68k_reduced``, the
one whose labels come from sorted populations (its depth is the cells' total over all genes, as only
765 genes are kept), and ``liao_bal``, lung immune cells whose T cells are known by their T-cell
receptor, not by expression, so only the T-cell signature is measured there; it is downloaded once
from PyPI) and each model (the bundled demo model, an encoder trained here, self-supervised, on the
same cells, and any model folder given with ``--models``), integrated-gradient attributions are
scored with every scoring mode of :func:`scsig.tl.score` next to ``sc.tl.score_genes`` (log1p
CP10k), UCell and AUCell:

1. interferon response: AUROC STIM vs CTRL (pooled) on both Kang subsets;
2. cell-type markers: AUROC of the target type against all other cells, for standard PBMC marker
   signatures (labels from the data; pbmc3k's are derived by clustering, see ``pbmc3k_labels``);
3. depth confound, per marker signature: Spearman of score and total counts within the target type
   (signed, the held-out check's measure) and the mean |Spearman| within every cell type;
4. thinning: every cell's counts binomially thinned to 50 %, re-attributed and re-scored; the mean
   change of the target type's score in SDs of that score (signed);
5. cross-dataset: the same marker signature scored in two datasets (each scored on its own, as a user
   would), pooled: AUROC of the target type against the rest over both, and the difference of the
   target type's median between the datasets in SDs of the pooled target-type scores.

Which cells each model saw: ``pbmc-demo`` was trained on pbmc3k, so its pbmc3k numbers are on its own
training cells (flagged ``in_training`` in the tables); the Kang cells are new to it. For a model folder,
``--trained-on`` says which datasets it saw. A ``trained`` model
is trained on the dataset it is measured on (self-supervised, no labels). Every number is written to
``--out`` (CSV and markdown); nothing is tuned to these data. Run from the repository root:

    python benchmarks/validity.py --out docs/validity
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse
from scipy.stats import spearmanr

import scsig as sg
from scsig._constants import TARGETS
from scsig.tl._compare import SCORERS, _auroc, _expression_scores
from scsig.tl._score_modes import MODES

ISG = ["ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "IFITM3", "OAS1", "LY6E", "IFI44L", "RSAD2"]
"""Interferon-stimulated genes (the classic 12-gene check)."""

MARKERS = {
    "B": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "CD22", "TCL1A"],
    "CD14 Mono": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1", "VCAN"],
    "CD16 Mono": ["FCGR3A", "MS4A7", "LST1", "CDKN1C", "RHOC"],
    "T": ["CD3D", "CD3E", "CD3G", "IL7R", "LEF1", "TCF7"],
    "CD8 T": ["CD8A", "CD8B"],  # target: the CD8 T cells (fine label), against every other cell
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
    # pbmc68k_reduced bulk_labels (types named after sorted populations)
    "CD14+ Monocyte": "CD14 Mono",
    "CD19+ B": "B",
    "CD56+ NK": "NK",
    "CD8+ Cytotoxic T": "T",
    "CD8+/CD45RA+ Naive Cytotoxic": "T",
    "CD4+/CD25 T Reg": "T",
    "CD4+/CD45RO+ Memory": "T",
    "CD4+/CD45RA+/CD25- Naive T": "T",
    "Dendritic": "DC",
    "CD34+": "CD34+",
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


CD8_LABELS = {"CD8 T", "CD8 T cells", "CD8+ Cytotoxic T", "CD8+/CD45RA+ Naive Cytotoxic"}

TRAINED_ON = {"pbmc-demo": {"pbmc3k"}}
"""Datasets whose cells a named model was trained on (a ``trained`` model: the dataset it is measured on)."""


DATASETS = ("kang_ifnb", "kang_muscat", "pbmc3k", "pbmc68k", "liao_bal")
"""Every dataset measured; ``liao_bal`` is downloaded once (37 MB, from PyPI) by ``sg.datasets.liao_bal``."""


def _load(name: str) -> tuple[ad.AnnData, dict]:
    if name == "kang_ifnb":
        adata = sg.datasets.kang_ifnb()
        adata.obs["celltype"] = adata.obs["seurat_annotations"].astype(str)
        adata.obs["broad"] = adata.obs["celltype"].map(BROAD)
        return adata, {"contrast": "stim", "positive": "STIM"}
    if name == "kang_muscat":
        adata = sg.datasets.kang_muscat()
        adata.obs["celltype"] = adata.obs["cluster_id"].astype(str)
        adata.obs["broad"] = adata.obs["celltype"].map(BROAD)
        return adata, {"contrast": "group_id", "positive": "stim"}
    if name == "pbmc3k":
        adata = sg.datasets.pbmc3k()
        adata.obs["celltype"] = pbmc3k_labels(adata)
        adata.obs["broad"] = adata.obs["celltype"]
        return adata, {}
    if name == "pbmc68k":
        adata = sg.datasets.pbmc68k_reduced()
        adata.obs["celltype"] = adata.obs["bulk_labels"].astype(str)
        adata.obs["broad"] = adata.obs["celltype"].map(BROAD)
        return adata, {}
    if name == "liao_bal":
        # T cells by their receptor, not by expression: a productive TRA or TRB chain; the rest is mixed
        # (mostly macrophages, and T cells whose receptor was not captured)
        adata = sg.datasets.liao_bal()
        adata.obs["celltype"] = np.where(adata.obs["tcr"] != "none", "T (TCR)", "no TCR")
        adata.obs["broad"] = np.where(adata.obs["tcr"] != "none", "T", "no TCR")
        return adata, {}
    msg = f"unknown dataset {name!r}; choose from {DATASETS}"
    raise ValueError(msg)


def load_datasets(names: list[str] | tuple[str, ...] | None = None) -> dict[str, tuple[ad.AnnData, dict]]:
    """The datasets ``names`` (default: all of ``DATASETS``) with ``obs`` columns celltype, broad and depth."""
    out = {name: _load(name) for name in (DATASETS if names is None else names)}
    for adata, _ in out.values():
        adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
        adata.obs["depth"] = np.asarray(adata.X.sum(axis=1)).ravel()
    if "pbmc68k" in out:  # 765 of its genes only: the depth is the cells' total over all genes, kept by the loader
        out["pbmc68k"][0].obs["depth"] = out["pbmc68k"][0].obs["n_counts"].to_numpy(dtype=float)
    return out


def thin(adata: ad.AnnData, fraction: float = 0.5, seed: int = 0) -> ad.AnnData:
    """Binomial thinning of every cell's counts to ``fraction``."""
    rng = np.random.default_rng(seed)
    x = sparse.csr_matrix(adata.X, dtype=np.int64, copy=True)
    x.data = rng.binomial(x.data, fraction)
    x.eliminate_zeros()
    return ad.AnnData(X=x.astype(np.float32), obs=adata.obs.copy(), var=adata.var.copy())


def target_mask(adata: ad.AnnData, signature: str) -> np.ndarray:
    if signature == "CD8 T":
        return adata.obs["celltype"].isin(CD8_LABELS).to_numpy()
    return (adata.obs["broad"] == signature).to_numpy()


def signatures_of(adata: ad.AnnData) -> dict[str, list[str]]:
    return {name: genes for name, genes in MARKERS.items() if target_mask(adata, name).sum() >= 10}


def mode_scores(adata: ad.AnnData, signatures: dict[str, list[str]], top_ks: list[int]) -> dict[str, pd.DataFrame]:
    """Every scoring mode of sg.tl.score on the (attributed) data: {method: cells x signatures}.

    ``top_ks`` adds ``mode="top"`` with other ``top_k`` values (``attr_top_k<k>``)."""
    out = {}
    runs = [(f"attr_{mode}", mode, None) for mode in MODES] + [(f"attr_top_k{k}", "top", {"top_k": k}) for k in top_ks]
    for label, mode, kwds in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # genes the model lacks are reported by sg.tl.score
            sg.tl.score(adata, signatures, mode=mode, mode_kwds=kwds, key_added="_s")
        out[label] = adata.obsm["_s"].copy()
    return out


def expression_scores(adata: ad.AnnData, signatures: dict[str, list[str]], methods: list[str]) -> dict:
    """score_genes / UCell / AUCell on the counts (they do not depend on the model)."""
    out = {}
    for m in methods:
        out[m] = pd.DataFrame(
            {
                name: _expression_scores(adata.X, adata.obs_names, adata.var_names, genes, m, seed=0)
                for name, genes in signatures.items()
            },
            index=adata.obs_names,
        )
    return out


def within_type_rho(values: np.ndarray, depth: np.ndarray, groups: pd.Series) -> float:
    """Mean |Spearman(score, depth)| within each group of at least 10 cells."""
    rhos = []
    for g in groups.unique():
        m = (groups == g).to_numpy()
        if m.sum() >= 10 and np.ptp(values[m]) > 0:
            rhos.append(abs(spearmanr(values[m], depth[m]).statistic))
    return float(np.mean(rhos)) if rhos else float("nan")


def measure(adata: ad.AnnData, scores: dict, thinned: dict, dname: str, model: str) -> list[dict]:
    rows = []
    depth = adata.obs["depth"].to_numpy()
    for method, table in scores.items():
        for sig in table.columns:
            v = table[sig].to_numpy()
            target = target_mask(adata, sig)
            row = {"dataset": dname, "model": model, "method": method, "signature": sig}
            row["auroc"] = _auroc(np.nan_to_num(v, nan=-np.inf), target)
            row["rho_target"] = float(spearmanr(v[target], depth[target]).statistic)
            row["abs_rho_all_types"] = within_type_rho(v, depth, adata.obs["celltype"])
            sd = np.nanstd(v[target])
            row["thin_shift_sd"] = float(np.nanmean(thinned[method][sig].to_numpy()[target] - v[target]) / sd)
            rows.append(row)
    return rows


def interferon(adata: ad.AnnData, scores: dict, contrast: dict, dname: str, model: str) -> list[dict]:
    rows = []
    positive = (adata.obs[contrast["contrast"]].astype(str) == contrast["positive"]).to_numpy()
    groups = adata.obs["celltype"].astype(str) + "/" + adata.obs[contrast["contrast"]].astype(str)
    for method, table in scores.items():
        v = table["interferon"].to_numpy()
        rows.append(
            {
                "dataset": dname,
                "model": model,
                "method": method,
                "auroc": _auroc(np.nan_to_num(v, nan=-np.inf), positive),
                "abs_rho_within_type_condition": within_type_rho(v, adata.obs["depth"].to_numpy(), groups),
            }
        )
    return rows


def cross_dataset(per_dataset: dict[str, tuple[ad.AnnData, dict]], model: str) -> list[dict]:
    """The same signature in two datasets, each scored on its own: pooled AUROC and median shift of the target."""
    rows = []
    for (d1, (a1, s1)), (d2, (a2, s2)) in itertools.combinations(per_dataset.items(), 2):
        for method in s1:
            for sig in sorted(set(s1[method].columns) & set(s2[method].columns)):
                t1, t2 = target_mask(a1, sig), target_mask(a2, sig)
                v1, v2 = s1[method][sig].to_numpy(), s2[method][sig].to_numpy()
                pooled = np.concatenate([v1, v2])
                target = np.concatenate([t1, t2])
                sd = np.nanstd(pooled[target])
                rows.append(
                    {
                        "pair": f"{d1} + {d2}",
                        "model": model,
                        "method": method,
                        "signature": sig,
                        "pooled_auroc": _auroc(np.nan_to_num(pooled, nan=-np.inf), target),
                        "target_median_shift_sd": float((np.nanmedian(v2[t2]) - np.nanmedian(v1[t1])) / sd),
                    }
                )
    return rows


# The scVI backend's donor-effect measure belongs here (a function of its own, added with that backend).


def load_model(name: str, adata: ad.AnnData, dname: str, epochs: int):
    if name == "trained":
        # every detected gene, as a foundation model sees them (train_encoder's default is 2,000 HVGs)
        return sg.models.train_encoder(
            adata, n_top_genes=None, epochs=epochs, seed=0, progress=False, name=f"trained-{dname}"
        )
    return sg.models.load(name)


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
    parser.add_argument("--models", nargs="+", default=["pbmc-demo", "trained"], help="names or model folders")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the locally trained encoders")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="datasets to measure")
    parser.add_argument("--expression", nargs="*", default=None, help="expression scores (default: all installed)")
    parser.add_argument(
        "--trained-on",
        nargs="*",
        default=[],
        metavar="MODEL=DATASET",
        help="datasets a model folder was trained on (pbmc-demo and its variants: pbmc3k)",
    )
    parser.add_argument("--top-k-sweep", nargs="*", type=int, default=[], help="also score mode='top' with these top_k")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["model"],
        choices=["model", *TARGETS],
        help="attribution targets to measure ('model': each model's default); others are labelled '<model>, <target>'",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sg.settings.progress = False
    expr = [m for m, pkg in SCORERS.items() if m != "attribution" and (pkg is None or importlib.util.find_spec(pkg))]
    expr = expr if args.expression is None else [m for m in expr if m in args.expression]
    print(f"expression scores: {expr}; attribution modes: {list(MODES)}")

    trained_on = {k: set(v) for k, v in TRAINED_ON.items()}
    for pair in args.trained_on:
        label, _, dname = pair.partition("=")
        trained_on.setdefault(label, set()).add(dname)
    data = load_datasets(args.datasets)
    rows, ifn_rows, cross_rows = [], [], []
    expression = {}
    for dname, (adata, _) in data.items():
        sigs = signatures_of(adata)
        t0 = time.perf_counter()
        expression[dname] = (expression_scores(adata, sigs, expr), expression_scores(thin(adata), sigs, expr))
        print(f"{dname}: expression scores {time.perf_counter() - t0:.0f} s", flush=True)
    loaded: dict = {}
    for mname, target in itertools.product(args.models, args.targets):
        name = Path(mname).name if Path(mname).is_dir() else mname
        label = name if target == "model" else f"{name}, {target}"
        per_dataset = {}
        for dname, (adata, contrast) in data.items():
            t0 = time.perf_counter()
            sigs = signatures_of(adata)
            if contrast:
                sigs = {**sigs, "interferon": ISG}
            if (mname, dname) not in loaded:  # one model (or trained encoder) for every target
                loaded[mname, dname] = load_model(mname, adata, dname, args.epochs)
            model = loaded[mname, dname]
            if name in trained_on:  # named, or given with --trained-on
                seen = trained_on[name]
            else:  # a variant trained by scripts/train_demo_model.py sees the demo model's cells
                seen = TRAINED_ON["pbmc-demo"] if model.name.startswith("pbmc-demo") else set()
            in_training = name == "trained" or dname in seen
            scored = {}
            for which, counts in (("orig", adata), ("thin", thin(adata))):
                work = counts.copy()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # cells left without counts after thinning
                    sg.tl.attribute(
                        work, model, target=None if target == "model" else target, progress=False, on_degenerate="warn"
                    )
                scored[which] = mode_scores(work, sigs, args.top_k_sweep)
            e_orig, e_thin = expression[dname]
            marker_cols = [s for s in sigs if s != "interferon"]
            orig = {m: t[marker_cols] for m, t in scored["orig"].items()} | e_orig
            thinned = {m: t[marker_cols] for m, t in scored["thin"].items()} | e_thin
            for r in measure(adata, orig, thinned, dname, label):
                rows.append({**r, "in_training": in_training})
            if contrast:
                ifn_expr = expression_scores(adata, {"interferon": ISG}, expr)
                ifn = {m: t[["interferon"]] for m, t in scored["orig"].items()} | ifn_expr
                ifn_rows += [{**r, "in_training": in_training} for r in interferon(adata, ifn, contrast, dname, label)]
            if name != "trained":
                per_dataset[dname] = (adata, orig)
            print(f"{dname} / {label}: {time.perf_counter() - t0:.0f} s", flush=True)
        if len(per_dataset) > 1:
            cross_rows += cross_dataset(per_dataset, label)

    markers, ifn, cross = pd.DataFrame(rows), pd.DataFrame(ifn_rows), pd.DataFrame(cross_rows)
    markers.to_csv(args.out / "markers.csv", index=False)
    ifn.to_csv(args.out / "interferon.csv", index=False)
    cross.to_csv(args.out / "cross_dataset.csv", index=False)
    write_tables(markers, ifn, cross, args.out)
    print(f"\nwrote {args.out}/markers.csv, interferon.csv, cross_dataset.csv and tables.md")


def write_tables(markers: pd.DataFrame, ifn: pd.DataFrame, cross: pd.DataFrame, out: Path) -> None:
    pd.set_option("display.width", 250)
    markers = markers.assign(abs_rho_target=markers["rho_target"].abs())
    keys = ["dataset", "model", "in_training"]
    summary = markers.groupby([*keys, "method"])[
        ["auroc", "abs_rho_target", "abs_rho_all_types", "thin_shift_sd"]
    ].mean()
    sections = [
        (
            "Summary per dataset and model: means over the marker signatures",
            summary.reset_index().set_index([*keys, "method"]),
        ),
        (
            "Marker AUROC, target type vs rest",
            markers.pivot_table(index=[*keys, "signature"], columns="method", values="auroc"),
        ),
        (
            "Spearman(score, total counts) within the target type (signed)",
            markers.pivot_table(index=[*keys, "signature"], columns="method", values="rho_target"),
        ),
        (
            "Mean |Spearman(score, total counts)| within every cell type",
            markers.pivot_table(index=[*keys, "signature"], columns="method", values="abs_rho_all_types"),
        ),
        (
            "Thinning every cell to 50 %: mean change of the target type's score, in its SDs (signed)",
            markers.pivot_table(index=[*keys, "signature"], columns="method", values="thin_shift_sd"),
        ),
    ]
    if len(ifn):
        sections.append(
            (
                "Interferon signature: AUROC STIM vs CTRL, and mean |Spearman| with depth within type x condition",
                ifn.set_index([*keys, "method"])[["auroc", "abs_rho_within_type_condition"]],
            )
        )
    if len(cross):
        cross_summary = cross.assign(abs_shift=cross["target_median_shift_sd"].abs())
        sections += [
            (
                "Cross-dataset: mean over signatures and pairs of the pooled AUROC and |target median shift| (SDs)",
                cross_summary.groupby(["model", "method"])[["pooled_auroc", "abs_shift"]].mean(),
            ),
            (
                "Cross-dataset, per pair and signature: pooled AUROC",
                cross.pivot_table(index=["model", "pair", "signature"], columns="method", values="pooled_auroc"),
            ),
            (
                "Cross-dataset, per pair and signature: target median shift, second minus first dataset (SDs)",
                cross.pivot_table(
                    index=["model", "pair", "signature"], columns="method", values="target_median_shift_sd"
                ),
            ),
        ]
    with (out / "tables.md").open("w") as fh:
        for title, table in sections:
            print(f"\n## {title}\n")
            print(table.round(3).to_string())
            fh.write(f"### {title}\n\n{table.round(3).pipe(markdown)}\n\n")


if __name__ == "__main__":
    main()
