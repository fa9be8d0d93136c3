"""How much of a signature score's variance is the donor (batch)? scVI attribution scores vs the demo model and score_genes.

On the bundled muscat Kang subset (``sg.datasets.kang_muscat()``: 2 donors x 2 conditions, 1,556 cells), the
interferon signature is scored four ways:

- ``scvi (donor encoded)``: the attribution score of an scVI trained here with ``batch_key="donor"`` and
  ``encode_covariates=True`` (each cell's donor held fixed in the encoder; ``--epochs`` epochs, seed 0);
- ``scvi (no covariates)``: the same scVI set-up with scvi-tools' default ``encode_covariates=False``;
- ``pbmc-demo``: the attribution score of the bundled demonstration encoder (trained on pbmc3k, no donor input);
- ``score_genes``: ``scanpy.tl.score_genes`` on log-normalized counts.

For each score, within each cell type x condition stratum, the share of the score's variance explained by the
donor (between-donor sum of squares over total sum of squares, eta squared) is computed; the table gives the
pooled share (sums over strata) and the median over strata, with the AUROC of stimulated vs control cells
within cell type (median over cell types) beside it: a low donor share with a high AUROC is the aim.

    python benchmarks/validity_batch.py --epochs 30
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import scsig as sg

IFN = ["ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "IFITM3", "OAS1", "LY6E", "IFI44L", "RSAD2"]


def donor_share(obs: pd.DataFrame, score: str, *, donor: str, strata: list[str]) -> tuple[float, float]:
    """Pooled and median eta squared of ``donor`` for ``score`` within ``strata``."""
    between = total = 0.0
    shares = []
    for _, g in obs.groupby(strata, observed=True):
        if g[donor].nunique() < 2:
            continue
        y = g[score].to_numpy(dtype=float)
        tot = float(((y - y.mean()) ** 2).sum())
        means = g.groupby(donor, observed=True)[score].agg(["mean", "size"])
        btw = float((means["size"] * (means["mean"] - y.mean()) ** 2).sum())
        between += btw
        total += tot
        if tot > 0:
            shares.append(btw / tot)
    return between / total, float(np.median(shares))


def median_auroc(obs: pd.DataFrame, score: str, *, celltype: str, condition: str, positive: str) -> float:
    aucs = []
    for _, g in obs.groupby(celltype, observed=True):
        y = (g[condition] == positive).to_numpy()
        if 0 < y.sum() < len(y):
            aucs.append(roc_auc_score(y, g[score].to_numpy()))
    return float(np.median(aucs))


def train_scvi(adata, *, encode: bool, epochs: int):
    import scvi

    scvi.settings.seed = 0
    scvi.settings.verbosity = logging.ERROR
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data, batch_key="donor")
    vae = scvi.model.SCVI(data, n_latent=10, encode_covariates=encode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae.train(max_epochs=epochs, batch_size=256, accelerator="cpu", enable_progress_bar=False)
    return vae


def main() -> int:
    import scanpy as sc

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    sg.settings.progress = False
    adata = sg.datasets.kang_muscat()
    adata.obs["donor"] = adata.obs["sample_id"].str[-3:].astype("category")
    genes = [g for g in IFN if g in adata.var_names]
    scores = {}
    for label, encode in (("scvi (donor encoded)", True), ("scvi (no covariates)", False)):
        vae = train_scvi(adata, encode=encode, epochs=args.epochs)
        key = f"attr_{len(scores)}"
        sg.tl.attribute(adata, sg.models.from_scvi(vae), key_added=key)
        sg.tl.score(adata, genes, layer=key, key_added=label)
        scores[label] = label
    sg.tl.attribute(adata, "pbmc-demo", key_added="attr_demo")
    sg.tl.score(adata, genes, layer="attr_demo", key_added="pbmc-demo")
    scores["pbmc-demo"] = "pbmc-demo"
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.tl.score_genes(norm, genes, score_name="score_genes", random_state=0)
    adata.obs["score_genes"] = norm.obs["score_genes"]
    scores["score_genes"] = "score_genes"

    rows = []
    for label, col in scores.items():
        pooled, median = donor_share(adata.obs, col, donor="donor", strata=["cluster_id", "group_id"])
        auc = median_auroc(adata.obs, col, celltype="cluster_id", condition="group_id", positive="stim")
        rows.append({"score": label, "donor_share_pooled": pooled, "donor_share_median": median, "median_auroc": auc})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
