"""Cross-species scoring on pseudo-mouse cells: agreement with the 1:1 renaming baseline, speed, TRON, tables.

No labelled mouse counts ship with scsig, so the mouse cells here are *pseudo-mouse*: the bundled human
PBMCs (``sg.datasets.kang_ifnb()``, 832 cells with ``seurat_annotations``) with every gene that has a mouse
ortholog in the ``--data-table`` (default ``mgi2024``) renamed to one of them (the one ``sg.get.orthologs``
picks -- the only one, or the one with the same symbol -- else the first in the table's order not yet taken;
genes without an ortholog dropped). The cells therefore carry one2one, one2many and many2one
genes under mouse names, as a mouse dataset would. ``--table`` (default ``mgi2024``) is the table the model
and the signatures use; run with ``--table ensembl105`` for the earlier default.

Part 1 (``--part score``), in one process:

- baseline: the mouse genes with a one2one human ortholog (in ``--table``) renamed back to human symbols
  (the others left as they are, so the human model does not know them), attributed with ``pbmc-demo``;
- cross: ``sg.models.cross_species(pbmc-demo, species="mouse", orthologs=--table)`` on the pseudo-mouse counts;
- both scored with mouse-symbol marker signatures of one2one genes; per-type AUROC of each signature against
  the cells' labels, and Spearman's rho between the two models' scores over the cells;
- signatures given in *human* symbols (interferon response, classical monocyte, cytotoxic), translated with
  ``sg.get.orthologs(..., table=--table, as_signature=True)`` and scored on the pseudo-mouse cells with the
  cross model; their AUROC (stimulated vs control cells; CD14 Mono; CD8 T) against the same human signatures
  scored on the human cells with ``pbmc-demo``;
- time of ``sg.tl.attribute`` for both (after a warm-up run), the engine used, and the cross model with
  ``engine="captum"`` on ``--captum-cells`` cells (0: skipped) for the fast path's speed-up.

Part 2 (``--part tron``): the cells split 50/50 within each label (seed 0). ``sg.models.fit_conversion`` on
the training half; on the held-out half, for the initial and the learned conversion: a logistic regression
on the embeddings (fitted on the training half's embeddings) -- accuracy and macro-F1 -- and the marker
signatures' per-type AUROC from attributions. As a control, the same fit on the original *human* cells
through an identity "ortholog" table (every human gene its own ortholog): how much of any gain comes from
supervised re-weighting of the input genes rather than from a better species conversion.

Part 3 (``--part genes``): what each bundled table maps key immune genes to (``sg.get.orthologs``), the
table in ``docs/cross_species.md``.

    python benchmarks/cross_species.py            # all parts, MGI 2024 tables
    python benchmarks/cross_species.py --part score --table ensembl105 --captum-cells 0
    python benchmarks/cross_species.py --part tron --epochs 30 --l2 1.0 --lr 0.01
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

import scsig as sg

# marker signatures in mouse symbols (each gene has a 1:1 human ortholog; checked below)
MARKERS = {
    "B": ["Ms4a1", "Cd79a", "Cd79b", "Cd19"],
    "CD14 Mono": ["Cd14", "S100a8", "Fcn1", "Vcan"],
    "CD16 Mono": ["Ms4a7", "Cdkn1c", "Lst1"],
    "CD4 Naive T": ["Ccr7", "Sell", "Lef1", "Tcf7"],
    "CD4 Memory T": ["Il7r", "Cd40lg", "Cd4"],
    "CD8 T": ["Cd8a", "Cd8b1", "Gzmk"],
}


HUMAN_SIGNATURES = {  # in human symbols; (obs column, positive values) they should pick out
    "IFN response": (
        ["ISG15", "IFIT1", "IFIT2", "IFIT3", "IFITM3", "IFI6", "MX1", "OAS1", "RSAD2", "ISG20", "LY6E"],
        ("stim", ["STIM"]),
    ),
    "classical mono": (["S100A8", "S100A9", "LYZ", "FCN1", "CD14", "VCAN"], ("seurat_annotations", ["CD14 Mono"])),
    "cytotoxic": (["GZMB", "GZMA", "GZMH", "PRF1", "NKG7", "GNLY", "CCL5", "CCL4"], ("seurat_annotations", ["CD8 T"])),
}

IMMUNE_GENES = ["CCL5", "IFIT1", "IFIT3", "IFITM3", "ISG15", "MX1", "S100A8", "S100A9", "LYZ", "GZMB", "GNLY", "IFI6",
                "CD19", "FCGR3A", "HLA-DRA"]  # fmt: skip


def pseudo_mouse(data_table: str = "mgi2024", table: str = "mgi2024") -> tuple[object, object, object, dict]:
    human = sg.datasets.kang_ifnb()
    # each human gene's pick (its only ortholog or the one with its symbol) first, then the first not yet taken
    picks = sg.get.orthologs(list(human.var_names), table=data_table).dropna(subset=["target"])
    pairs = sg.models.orthologs("human", "mouse", table=data_table)
    taken: set[str] = set()
    rename = {}
    for h, m in [
        *zip(picks["source"], picks["target"], strict=True),
        *zip(pairs["source"], pairs["target"], strict=True),
    ]:
        if h in human.var_names and h not in rename and m not in taken:
            rename[h] = m
            taken.add(m)
    rename = {h: rename[h] for h in human.var_names if h in rename}  # in the order of the human genes
    mouse = human[:, list(rename)].copy()
    mouse.var_names = [rename[g] for g in mouse.var_names]
    back = sg.models.orthologs("mouse", "human", table=table)
    one = back[back["relationship"] == "one2one"].set_index("source")["target"]
    baseline = mouse.copy()
    baseline.var_names = [one.get(g, g) for g in baseline.var_names]
    kinds = back.drop_duplicates("source").set_index("source")["relationship"]
    markers = {}
    for name, genes in MARKERS.items():
        ok = [g for g in genes if kinds.get(g) == "one2one" and g in mouse.var_names]
        markers[name] = ok
    n_kinds = kinds.reindex(mouse.var_names).fillna("no ortholog").value_counts().to_dict()
    print(
        f"pseudo-mouse ({data_table}): {mouse.n_obs} cells x {mouse.n_vars} mouse genes; their relationships "
        f"in {table}: {n_kinds}"
    )
    return human, mouse, baseline, markers


def auroc(adata, markers, labels) -> pd.Series:
    out = {}
    for name in markers:
        y = (labels == name).to_numpy()
        out[name] = roc_auc_score(y, adata.obsm["sig"][name].to_numpy())
    return pd.Series(out)


def part_score(args) -> None:
    human, mouse, baseline, markers = pseudo_mouse(args.data_table, args.table)
    base = sg.models.load("pbmc-demo")
    xmodel = sg.models.cross_species(base, species="mouse", orthologs=args.table)
    summary = xmodel.describe()["cross_species"]
    print(
        f"cross model ({args.table}): {xmodel.n_genes} mouse genes, {summary['n_pairs']} pairs "
        f"({summary['n_one_to_one']} one2one), {summary['n_model_genes_reached']} of {base.n_genes} model genes reached"
    )
    human_markers = sg.get.orthologs(markers, source="mouse", target="human", table=args.table, as_signature=True)
    if any(len(human_markers[k]) != len(v) for k, v in markers.items()):  # the markers are one2one
        raise RuntimeError(human_markers)
    print("signatures (mouse):", markers)
    timings = _attribute_timed(args, mouse, baseline, base, xmodel)
    print("overlap report of the cross model:", mouse.uns["scsig"]["layers"]["attr_ig"]["overlap"])

    sg.tl.score(mouse, markers, mode="classic", key_added="sig")  # the numbers in docs/cross_species.md
    sg.tl.score(baseline, human_markers, mode="classic", key_added="sig")
    labels = mouse.obs["seurat_annotations"]
    table = pd.DataFrame(
        {"auroc_baseline": auroc(baseline, markers, labels), "auroc_cross": auroc(mouse, markers, labels)}
    )
    table["spearman"] = [stats.spearmanr(mouse.obsm["sig"][k], baseline.obsm["sig"][k]).statistic for k in markers]
    print(table.round(4).to_string())
    _human_signatures(args, human, mouse, base)
    print(f"timings: {timings}")


def _attribute_timed(args, mouse, baseline, base, xmodel) -> dict:
    # warm-up (numba's kernels, first calls)
    sg.tl.attribute(baseline[:20].copy(), base)
    sg.tl.attribute(mouse[:20].copy(), xmodel)
    timings = {}
    for label, adata, model in (("baseline", baseline, base), ("cross", mouse, xmodel), ("baseline2", baseline, base)):
        start = time.perf_counter()
        sg.tl.attribute(adata, model)
        timings[label] = round(time.perf_counter() - start, 2)
        print(f"{label}: attribute {adata.n_obs} cells, engine {adata.uns['scsig']['layers']['attr_ig']['engine']}")
    base_mean = (timings["baseline"] + timings["baseline2"]) / 2
    print(f"cross / baseline time (fast path, same run) = {timings['cross'] / base_mean:.2f}")
    if args.captum_cells > 0:
        sub = mouse[: args.captum_cells].copy()
        start = time.perf_counter()
        sg.tl.attribute(sub, xmodel, engine="captum")
        t_captum = time.perf_counter() - start
        t_fast_same = timings["cross"] * args.captum_cells / mouse.n_obs
        print(
            f"cross model, captum on {args.captum_cells} cells: {t_captum:.2f} s; fast path (pro rata of the full "
            f"run) {t_fast_same:.2f} s; captum / fast = {t_captum / t_fast_same:.1f}x"
        )
        diff = abs(sub.layers["attr_ig"] - mouse[: args.captum_cells].layers["attr_ig"]).sum(axis=1).max() / 1000
        print(f"cross model fast vs captum: max row-L1 relative difference {diff:.2e}")
    return timings


def _human_signatures(args, human, mouse, base) -> None:
    """Human-symbol signatures: on the human cells with pbmc-demo, and translated onto the pseudo-mouse cells."""
    sigs = {k: v[0] for k, v in HUMAN_SIGNATURES.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        translated = sg.get.orthologs(sigs, source="human", target="mouse", table=args.table, as_signature=True)
    for w in caught:
        print("sg.get.orthologs:", w.message)
    sg.tl.attribute(human, base)
    sg.tl.score(human, sigs, mode="classic", key_added="hsig")
    sg.tl.score(mouse, translated, mode="classic", key_added="hsig")
    rows = {}
    for name, (genes, (column, positive)) in HUMAN_SIGNATURES.items():
        y = human.obs[column].astype(str).isin(positive).to_numpy()
        rows[name] = {
            "genes (human)": len(genes),
            "genes (mouse, translated)": len(translated[name]),
            "in the cross model": int(np.isin(translated[name], mouse.var_names[mouse.var["attr_ig_in_model"]]).sum()),
            "AUROC human cells": roc_auc_score(y, human.obsm["hsig"][name]),
            "AUROC pseudo-mouse": roc_auc_score(y, mouse.obsm["hsig"][name]),
        }
    print(f"human-symbol signatures translated with {args.table}: {translated}")
    print(pd.DataFrame(rows).T.round(4).to_string())


def part_genes(args) -> None:
    """What each bundled table maps key immune genes to (the table in docs/cross_species.md)."""
    cols = {}
    for table in ("mgi2024", "hcop2024", "ensembl105"):
        m = sg.get.orthologs(IMMUNE_GENES, table=table, expand=True)
        listed = m.dropna(subset=["target"]).groupby("source", sort=False)["target"].agg(", ".join)
        cols[table] = listed.reindex(IMMUNE_GENES).fillna("--")
        picked = sg.get.orthologs(IMMUNE_GENES, table=table)
        cols[f"{table}: default pick"] = picked.set_index("source")["target"].reindex(IMMUNE_GENES).fillna("--")
    frame = pd.DataFrame(cols)
    print("| human gene | " + " | ".join(frame.columns) + " |")
    print("| --- " * (len(frame.columns) + 1) + "|")
    for gene, row in frame.iterrows():
        print(f"| {gene} | " + " | ".join(row.tolist()) + " |")


def part_tron(args) -> None:
    human, mouse, _, markers = pseudo_mouse(args.data_table, args.table)
    labels = mouse.obs["seurat_annotations"].astype(str)
    rng = np.random.default_rng(0)
    train = np.zeros(mouse.n_obs, dtype=bool)
    for lab in labels.unique():
        idx = np.flatnonzero(labels.to_numpy() == lab)
        train[rng.choice(idx, size=len(idx) // 2, replace=False)] = True
    base = sg.models.load("pbmc-demo")
    human_markers = sg.get.orthologs(markers, source="mouse", target="human", table=args.table, as_signature=True)
    identity = pd.DataFrame({"source": base.gene_order, "target": base.gene_order})
    rows = {}
    for kind, data, sigs, xmodel in (
        ("pseudo-mouse", mouse, markers, sg.models.cross_species(base, species="mouse", orthologs=args.table)),
        (
            "human, identity table",
            human,
            human_markers,
            sg.models.cross_species(base, species="human-copy", orthologs=identity),
        ),
    ):
        rows.update(_tron_one(args, kind, data, sigs, xmodel, labels, train))
    print(pd.DataFrame(rows).round(4).to_string())


def _tron_one(args, kind, data, markers, xmodel, labels, train) -> dict:
    tr, te = data[train].copy(), data[~train].copy()
    print(f"{kind}: train {tr.n_obs} cells, held-out {te.n_obs} cells")
    start = time.perf_counter()
    learned, pairs = sg.models.fit_conversion(
        xmodel, tr, labels="seurat_annotations", epochs=args.epochs, l2=args.l2, lr=args.lr
    )
    print(
        f"fit_conversion: {time.perf_counter() - start:.1f} s; loss {pairs.attrs['loss_history'][0]:.3f} -> "
        f"{pairs.attrs['loss_history'][-1]:.3f}"
    )
    print("largest changes:\n", pairs.head(8).round(3).to_string())
    print(f"weights: mean |change| {pairs['change'].abs().mean():.4f}, max {pairs['change'].abs().max():.4f}")
    rows = {}
    for name, model in ((f"{kind}: initial", xmodel), (f"{kind}: learned", learned)):
        emb_tr = model.embed(sg.pp.prepare(tr, model).X)
        emb_te = model.embed(sg.pp.prepare(te, model).X)
        clf = LogisticRegression(max_iter=2000).fit(emb_tr, labels[train])
        pred = clf.predict(emb_te)
        held = te.copy()
        sg.tl.attribute(held, model)
        sg.tl.score(held, markers, mode="classic", key_added="sig")  # the numbers in docs/cross_species.md
        au = auroc(held, markers, labels[~train])
        rows[name] = {
            "held-out accuracy": accuracy_score(labels[~train], pred),
            "held-out macro-F1": f1_score(labels[~train], pred, average="macro"),
            "mean marker AUROC": au.mean(),
            **{f"AUROC {k}": v for k, v in au.items()},
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["score", "tron", "genes", "all"], default="all")
    parser.add_argument("--table", default="mgi2024", help="ortholog table of the model and the signatures")
    parser.add_argument("--data-table", default="mgi2024", help="ortholog table that makes the pseudo-mouse cells")
    parser.add_argument("--captum-cells", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    sg.settings.progress = False
    if args.part in ("score", "all"):
        part_score(args)
    if args.part in ("tron", "all"):
        part_tron(args)
    if args.part in ("genes", "all"):
        part_genes(args)


if __name__ == "__main__":
    main()
