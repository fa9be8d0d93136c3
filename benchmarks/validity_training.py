"""Does training change how much attribution scores follow depth? Encoders measured on cells they never saw.

``benchmarks/validity.py`` measures the bundled ``pbmc-demo`` encoder, which was trained on all of
pbmc3k, so its pbmc3k numbers are on its own training cells. This script asks what training choices
do on *new* cells, with the seed-to-seed spread that single runs hide:

- pbmc3k's QC'd cells (the demo model's QC and labels, ``scripts/train_demo_model.py``) are split at
  random (seed 0) into halves; encoders are trained on the first half only and measured on the second;
- every recipe is trained with several seeds;
- recipes (all the demo model's recipe otherwise, see ``RECIPES``): ``shipped`` (the demo recipe),
  ``wide`` (thinning to 10-100 % of depth instead of 30-100 %), ``consistency`` (wide thinning and the
  depth-consistency term), ``attr-consistency`` (wide thinning and the attribution-consistency term),
  ``+muscat`` and ``+muscat-wide`` (the same half plus muscat's Kang cells, 2 donors, control and
  stimulated; cells whose barcode also occurs in ``kang_ifnb`` are left out, so ``kang_ifnb`` stays
  unseen by every encoder), ``+muscat-ctrl`` (muscat's control cells only) and ``+panel`` (the half
  plus a copy of it restricted to the 1,267 genes muscat measured: muscat's gene panel without its
  cells);
- with ``--ensemble``, also two ensembles of a recipe's seeds: the mean of their normalized
  attributions (``mean of N seeds``), and one model of the encoders side by side (``ensemble of N
  seeds``, see ``Concatenated``: the integrated gradients of the mean of their targets);
- measured on the held-out pbmc3k half, on ``kang_ifnb``, ``pbmc68k`` and ``liao_bal`` (never seen) and on
  ``kang_muscat`` (seen by the ``+muscat`` recipes, flagged; ``--datasets`` chooses): the marker signatures of ``benchmarks/validity.py``, scores
  ``mode="classic"``, ``"top"``, ``"rank"`` and ``"cosine"`` against ``scanpy.tl.score_genes``.

Usage (about 40 minutes on two busy cores)::

    python benchmarks/validity_training.py --out docs/validity/training
    python benchmarks/validity_training.py --recipes shipped +muscat --seeds 0 --out /tmp/quick
    python benchmarks/validity_training.py --recipes shipped +muscat --seeds 0 1 2 3 4 --ensemble --out ens
    python benchmarks/validity_training.py --recipes shipped --seeds 0 1 2 3 4 --top-k-sweep 50 100 200 --out k
    python benchmarks/validity_training.py --combine run1/markers.csv run2/markers.csv --out merged  # runs split up
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import sparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

import train_demo_model as demo  # noqa: E402
import validity as V  # noqa: E402

import scsig as sg  # noqa: E402
from scsig._constants import TARGETS  # noqa: E402

WIDE = {"thinning": (0.1, 1.0)}
RECIPES = {
    "shipped": {},
    "wide": WIDE,
    "consistency": {**WIDE, "consistency": 1.0},
    "attr-consistency": {**WIDE, "attribution_consistency": 5.0},
    "+muscat": {},
    "+muscat-wide": WIDE,
    "+muscat-ctrl": {},
    "+panel": {},
    "+bal": {},
}
"""Changes to the demo model's recipe (``train_demo_model.RECIPE``)."""

HELDOUT_STYLE = ["B", "NK", "CD14 Mono", "CD8 T"]
"""The signatures of a sorted-population check (B, NK, CD14 monocytes, CD8 T): the summary's columns."""


def split_pbmc3k(seed: int = 0) -> tuple[ad.AnnData, ad.AnnData]:
    """pbmc3k after the demo model's QC, with its training labels, split into two random halves."""
    raw, _ = demo.load_pbmc3k("bundled")
    cells = demo.qc(raw)
    cells.obs["cell_type"] = demo.derive_labels(cells, seed=0)
    test = np.random.default_rng(seed).random(cells.n_obs) < 0.5
    return cells[~test].copy(), cells[test].copy()


def training_cells(recipe: str, half: ad.AnnData, muscat: ad.AnnData, bal: ad.AnnData | None = None) -> ad.AnnData:
    """The training cells of ``recipe``: the pbmc3k half, alone or joined with more cells.

    ``+muscat`` and ``+muscat-wide``: muscat's cells; ``+muscat-ctrl``: its control cells only;
    ``+panel``: a copy of the half restricted to the genes muscat measured (muscat's gene panel
    without its cells, donors or stimulation); ``+bal``: the lung immune cells of ``liao_bal``
    (three patients, 10x 5'), labelled by ``train_demo_model.bal_with_labels``.
    """
    if recipe == "+muscat-ctrl":
        return demo.join_cells(half, muscat[muscat.obs["group_id"].astype(str) == "ctrl"])
    if recipe.startswith("+muscat"):
        return demo.join_cells(half, muscat)
    if recipe == "+panel":
        return demo.join_cells(half, half[:, half.var_names.isin(muscat.var_names)])
    if recipe == "+bal":
        return demo.join_cells(half, bal)
    return half


def evaluation_sets(test_half: ad.AnnData, names: list[str] | None = None) -> dict[str, ad.AnnData]:
    """Held-out pbmc3k half (labels of ``validity.pbmc3k_labels`` on all of pbmc3k) and the other datasets ``names``.

    Default: every other dataset of ``validity.DATASETS`` (kang_ifnb, pbmc68k and liao_bal are never seen
    by these encoders; kang_muscat is training data of the ``+muscat`` recipes)."""
    others = [d for d in V.DATASETS if d != "pbmc3k"] if names is None else [d for d in names if d != "pbmc3k"]
    data = V.load_datasets(["pbmc3k", *others])
    pbmc = data.pop("pbmc3k")[0]
    data["pbmc3k_heldout"] = (pbmc[pbmc.obs_names.isin(test_half.obs_names)].copy(), {})
    return {name: adata for name, (adata, _) in data.items()}


class Concatenated(torch.nn.Module):
    """Encoders side by side: their embeddings concatenated, scaled by ``1/sqrt(n)`` to keep unit length.

    Its ``self_similarity`` target is the mean of the encoders' targets, so its integrated gradients
    are the mean of theirs before each cell's normalization (attributed by captum here).
    """

    def __init__(self, encoders: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(encoders)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members], dim=1) / len(self.members) ** 0.5


def attribute(adata: ad.AnnData, model, target: str | None = None) -> sparse.csr_matrix:
    """The normalized integrated-gradient attribution layer of ``model`` on ``adata`` (``target``: the model's)."""
    work = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sg.tl.attribute(work, model, target=target, progress=False, on_degenerate="warn", key_added="_a")
    return sparse.csr_matrix(work.layers["_a"])


def score_layer(
    adata: ad.AnnData, layer: sparse.csr_matrix, sigs: dict, top_ks: tuple[int, ...] = ()
) -> dict[str, pd.DataFrame]:
    """``mode="classic"``, ``"top"``, ``"rank"`` and ``"cosine"`` scores of ``sigs`` on an attribution layer.

    ``top_ks``: also ``mode="top"`` with these ``top_k`` (as ``attr_top_k<k>``).
    """
    work = ad.AnnData(X=sparse.csr_matrix(layer.shape, dtype=np.float32), obs=adata.obs[[]].copy(), var=adata.var[[]])
    work.layers["_a"] = layer
    out = {}
    for mode, kwds, name in (
        ("classic", {}, "attr_classic"),
        ("top", {}, "attr_top"),
        ("rank", {}, "attr_rank"),
        ("cosine", {}, "attr_cosine"),
        *(("top", {"top_k": k}, f"attr_top_k{k}") for k in top_ks),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # top_k above pbmc68k's detected genes is measured on purpose
            sg.tl.score(work, sigs, layer="_a", mode=mode, mode_kwds=kwds or None, key_added="_s")
        out[name] = work.obsm["_s"].copy()
    return out


def score_all(adata: ad.AnnData, model, sigs: dict, target: str | None = None) -> dict[str, pd.DataFrame]:
    """Attribute ``adata`` with ``model`` and score ``sigs`` in every mode of ``score_layer``."""
    return score_layer(adata, attribute(adata, model, target), sigs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("validity_training_results"))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="also score the mean of the seeds' normalized attributions (model '<recipe> mean of N seeds')",
    )
    parser.add_argument("--top-k-sweep", nargs="*", type=int, default=[], help="also score mode='top' with these top_k")
    parser.add_argument(
        "--target",
        default=None,
        choices=TARGETS,
        help="attribution target (default: the model's, self_similarity); recorded in the model label",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        choices=[d for d in V.DATASETS if d != "pbmc3k"],
        help="datasets besides the held-out pbmc3k half (default: all)",
    )
    parser.add_argument(
        "--combine", nargs="+", type=Path, default=None, metavar="CSV", help="only summarize markers.csv files of runs"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        rows = pd.concat([pd.read_csv(path) for path in args.combine], ignore_index=True)
        rows.to_csv(args.out / "markers.csv", index=False)
        write_summary(rows, args.out)
        return
    sg.settings.progress = False
    half, test_half = split_pbmc3k()
    genes = list(sg.models.load("pbmc-demo").gene_order)  # the demo model's genes, so results compare
    muscat, _ = demo.muscat_without_ifnb_barcodes()
    evals = evaluation_sets(test_half, args.datasets)
    sigs = {name: V.signatures_of(adata) for name, adata in evals.items()}
    thinned = {name: V.thin(adata) for name, adata in evals.items()}
    expression = {}
    for name, adata in evals.items():
        expression[name] = (
            V.expression_scores(adata, sigs[name], ["score_genes"]),
            V.expression_scores(thinned[name], sigs[name], ["score_genes"]),
        )
    rows = []
    for recipe in args.recipes:
        label = recipe if args.target is None else f"{recipe}, {args.target}"
        bal = demo.bal_with_labels()[0] if recipe == "+bal" else None
        cells = training_cells(recipe, half, muscat, bal)
        layers = {name: ([], []) for name in evals}
        encoders = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            options = {**demo.RECIPE, **RECIPES[recipe]}
            model = demo.train(cells, genes, options, seed=seed, name=f"{recipe}-s{seed}", progress=False)
            trained = time.perf_counter() - t0
            encoders.append(model.encoder)
            for name, adata in evals.items():
                a_orig, a_thin = attribute(adata, model, args.target), attribute(thinned[name], model, args.target)
                if args.ensemble:
                    layers[name][0].append(a_orig)
                    layers[name][1].append(a_thin)
                ks = tuple(args.top_k_sweep)
                orig, thin = score_layer(adata, a_orig, sigs[name], ks), score_layer(adata, a_thin, sigs[name], ks)
                e_orig, e_thin = expression[name]
                measured = V.measure(adata, {**orig, **e_orig}, {**thin, **e_thin}, name, label)
                seen = (name == "kang_muscat" and recipe.startswith("+muscat")) or (name, recipe) == (
                    "liao_bal",
                    "+bal",
                )
                rows += [{**row, "seed": seed, "in_training": seen} for row in measured]
            print(
                f"{recipe} seed {seed}: {cells.n_obs} cells, trained {trained:.0f} s, total "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            pd.DataFrame(rows).to_csv(args.out / "markers.csv", index=False)
        if args.ensemble and len(args.seeds) > 1:
            n = len(args.seeds)
            joint = sg.models.from_module(Concatenated(encoders), genes, name=f"{recipe}-ensemble")
            for name, adata in evals.items():
                seen = (name == "kang_muscat" and recipe.startswith("+muscat")) or (name, recipe) == (
                    "liao_bal",
                    "+bal",
                )
                e_orig, e_thin = expression[name]
                mean_orig = score_layer(adata, sum(layers[name][0]) / n, sigs[name])
                mean_thin = score_layer(adata, sum(layers[name][1]) / n, sigs[name])
                measured = V.measure(
                    adata, {**mean_orig, **e_orig}, {**mean_thin, **e_thin}, name, f"{label} mean of {n} seeds"
                )
                rows += [{**row, "seed": -1, "in_training": seen} for row in measured]
                joint_orig, joint_thin = (
                    score_all(adata, joint, sigs[name], args.target),
                    score_all(thinned[name], joint, sigs[name], args.target),
                )
                measured = V.measure(
                    adata, {**joint_orig, **e_orig}, {**joint_thin, **e_thin}, name, f"{label} ensemble of {n} seeds"
                )
                rows += [{**row, "seed": -1, "in_training": seen} for row in measured]
            pd.DataFrame(rows).to_csv(args.out / "markers.csv", index=False)
    write_summary(pd.DataFrame(rows), args.out)


def write_summary(rows: pd.DataFrame, out: Path) -> None:
    rows = rows.assign(abs_rho_target=rows["rho_target"].abs())
    check = rows["signature"].isin(HELDOUT_STYLE)
    without = ~rows["dataset"].isin(rows.loc[check, "dataset"])  # e.g. liao_bal: the T-cell signature only
    style = rows[check | without]
    per_seed = style.groupby(["dataset", "model", "method", "seed", "in_training"], as_index=False)[
        ["auroc", "abs_rho_target", "thin_shift_sd"]
    ].mean()
    summary = per_seed.groupby(["dataset", "model", "in_training", "method"]).agg(
        auroc=("auroc", "mean"),
        abs_rho_target=("abs_rho_target", "mean"),
        abs_rho_min=("abs_rho_target", "min"),
        abs_rho_max=("abs_rho_target", "max"),
        thin_shift_sd=("thin_shift_sd", "mean"),
        seeds=("seed", "nunique"),
    )
    text = [
        "Means over the B, NK, CD14 Mono and CD8 T signatures (those a dataset has; a dataset with none of them, "
        "such as `liao_bal`, over its own: the T-cell signature), then over seeds; "
        "`abs_rho_min`/`abs_rho_max`: the range over seeds. With `--ensemble`: `<recipe> mean of N seeds`, the "
        "mean of the N encoders' normalized attributions, scored once; `<recipe> ensemble of N seeds`, one model "
        "of the N encoders side by side (its attributions are those of the mean of their targets).",
        "",
        V.markdown(summary),
    ]
    (out / "summary.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
