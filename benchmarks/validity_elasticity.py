"""Can a per-gene depth correction, measured by thinning the data itself, remove the score's depth dependence?

A candidate of the "expectation model" kind: how much a gene's attribution changes when a cell's depth
changes is measured on the data itself, without labels, by binomially thinning every cell to
``--fraction`` of its counts (a draw independent of the evaluation's thinning) and attributing again.
Per gene, the elasticity ``e_g`` is the slope of log attribution on log depth between the two; every
attribution is then rescaled to the data's median depth, ``a_cg * (d_c / median d) ** (-e_g)``, and
scored as the classic score (``sg.tl.score(mode="classic")`` of the rescaled values) or with
``mode="top"``'s per-cell factor. Two estimators of ``e_g``:

- ``detected``: least squares through the origin of ``log(a_thin / a)`` on ``log(d_thin / d)`` over the
  cells where the gene has an attribution in both (the change of a gene the cell still detects; genes
  that survive thinning are those whose counts were large enough, so this is biased towards large
  changes);
- ``all``: ``log(sum a_thin / sum a) / log(sum d_thin / sum d)`` over every cell (the change of the
  gene's mean attribution, zeros included: what a mean over the signature's genes sees).

Genes with an attribution in fewer than 20 cells take the median elasticity. Measured as in
``benchmarks/validity.py`` (marker AUROC, within-target-type Spearman with depth, shift under thinning
to 50 %) on cells the encoder never saw: an encoder of the demo recipe trained on one random half of
pbmc3k (as in ``benchmarks/validity_training.py``) on the other half, on ``kang_ifnb`` and on
``kang_muscat``; and ``pbmc-demo`` on ``kang_ifnb``. Run from the repository root (about 3 minutes)::

    python benchmarks/validity_elasticity.py --out docs/validity/elasticity
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

import train_demo_model as demo  # noqa: E402
import validity as V  # noqa: E402
import validity_training as VT  # noqa: E402

import scsig as sg  # noqa: E402
from scsig.tl._score_modes import DEFAULT_TOP_K, row_totals_and_tops  # noqa: E402

if TYPE_CHECKING:
    import anndata as ad

MIN_CELLS = 20
"""Genes with an attribution in fewer cells take the median elasticity."""


def depth(adata: ad.AnnData) -> np.ndarray:
    return np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()


def elasticity_detected(a: sparse.csr_matrix, a_thin: sparse.csr_matrix, d: np.ndarray, d_thin: np.ndarray):
    """Per gene: slope through the origin of log attribution ratio on log depth ratio, where both are > 0."""
    q = np.log(np.maximum(d_thin, 1.0) / np.maximum(d, 1.0))
    both = sparse.csr_matrix(a.multiply(a_thin > 0))
    both_thin = sparse.csr_matrix(a_thin.multiply(a > 0))
    both.sort_indices()
    both_thin.sort_indices()
    if not (np.array_equal(both.indptr, both_thin.indptr) and np.array_equal(both.indices, both_thin.indices)):
        msg = "the two attribution matrices do not share their non-zero pattern"
        raise RuntimeError(msg)
    rows = np.repeat(np.arange(a.shape[0]), np.diff(both.indptr))
    ratio = both_thin.data / both.data
    both = sparse.coo_matrix((both.data, (rows, both.indices)), shape=a.shape)
    num = np.bincount(both.col, weights=np.log(ratio) * q[both.row], minlength=a.shape[1])
    den = np.bincount(both.col, weights=q[both.row] ** 2, minlength=a.shape[1])
    n = np.bincount(both.col, minlength=a.shape[1])
    e = np.full(a.shape[1], np.nan)
    ok = n >= MIN_CELLS
    e[ok] = num[ok] / den[ok]
    return np.where(np.isnan(e), np.nanmedian(e), e)


def elasticity_all(a: sparse.csr_matrix, a_thin: sparse.csr_matrix, d: np.ndarray, d_thin: np.ndarray):
    """Per gene: log ratio of its summed attributions over log ratio of the summed depths."""
    s, s_thin = np.asarray(a.sum(axis=0)).ravel(), np.asarray(a_thin.sum(axis=0)).ravel()
    n = np.asarray((a > 0).sum(axis=0)).ravel()
    e = np.full(a.shape[1], np.nan)
    ok = (n >= MIN_CELLS) & (s_thin > 0)
    e[ok] = np.log(s_thin[ok] / s[ok]) / np.log(d_thin.sum() / d.sum())
    return np.where(np.isnan(e), np.nanmedian(e), e)


def corrected_scores(a, d, e, d_ref, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Classic scores of ``a`` after rescaling every attribution to the reference depth."""
    out = {}
    for sig, cols in columns.items():
        factor = (d[:, None] / d_ref) ** (-e[cols][None, :])
        out[sig] = np.asarray(a[:, cols].multiply(factor).mean(axis=1)).ravel()
    return pd.DataFrame(out)


def scores_of(a, d, columns, elasticities: dict[str, np.ndarray], d_ref: float) -> dict[str, pd.DataFrame]:
    totals, tops = row_totals_and_tops(a, DEFAULT_TOP_K)
    top = np.divide(totals, tops, out=np.ones_like(totals), where=tops > 0)
    none = np.zeros(a.shape[1])
    out = {}
    for name, e in {"classic": none, **{f"elastic_{k}": v for k, v in elasticities.items()}}.items():
        plain = corrected_scores(a, d, e, d_ref, columns)
        out[f"attr_{name}"] = plain
        out[f"attr_{name}_top".replace("classic_top", "top")] = plain.mul(top, axis=0)
    return out


def evaluate(model, adata: ad.AnnData, dname: str, label: str, *, fraction: float, seed: int) -> list[dict]:
    sigs = V.signatures_of(adata)
    genes = set(model.gene_order)
    position = {g: i for i, g in enumerate(adata.var_names)}
    columns = {
        s: np.array([position[g] for g in gs if g in position and g in genes], dtype=int) for s, gs in sigs.items()
    }
    columns = {s: c for s, c in columns.items() if c.size}
    a, d = VT.attribute(adata, model), depth(adata)
    calib = V.thin(adata, fraction, seed=seed)
    a_cal, d_cal = VT.attribute(calib, model), depth(calib)
    elasticities = {"detected": elasticity_detected(a, a_cal, d, d_cal), "all": elasticity_all(a, a_cal, d, d_cal)}
    d_ref = float(np.median(d))
    thinned = V.thin(adata)
    orig = scores_of(a, d, columns, elasticities, d_ref)
    thin = scores_of(VT.attribute(thinned, model), depth(thinned), columns, elasticities, d_ref)
    e_orig = V.expression_scores(adata, sigs, ["score_genes"])
    e_thin = V.expression_scores(thinned, sigs, ["score_genes"])
    for table in (*orig.values(), *thin.values()):
        table.index = adata.obs_names
    rows = V.measure(adata, {**orig, **e_orig}, {**thin, **e_thin}, dname, label)
    medians = {
        k: round(float(np.median(v[np.unique(np.concatenate(list(columns.values())))])), 3)
        for k, v in elasticities.items()
    }
    print(f"{label} on {dname}: median elasticity of the signature genes {medians}", flush=True)
    return rows


def summarize(rows: pd.DataFrame) -> str:
    rows = rows.assign(abs_rho_target=rows["rho_target"].abs())
    parts = []
    for title, subset in (
        ("Every marker signature", rows),
        ("The B, NK, CD14 Mono and CD8 T signatures", rows[rows["signature"].isin(VT.HELDOUT_STYLE)]),
    ):
        table = subset.groupby(["dataset", "model", "method"])[["auroc", "abs_rho_target", "thin_shift_sd"]].mean()
        parts += [f"### {title}: means", "", V.markdown(table), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("validity_elasticity_results"))
    parser.add_argument("--fraction", type=float, default=0.6, help="thinning that measures the elasticities")
    parser.add_argument("--seed", type=int, default=1, help="seed of that thinning (the evaluation's is 0)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sg.settings.progress = False
    half, test_half = VT.split_pbmc3k()
    genes = list(sg.models.load("pbmc-demo").gene_order)
    half_model = demo.train(half, genes, demo.RECIPE, seed=0, name="pbmc3k-half", progress=False)
    evals = VT.evaluation_sets(test_half)
    rows = []
    for dname in ("pbmc3k_heldout", "kang_ifnb", "kang_muscat"):
        rows += evaluate(half_model, evals[dname], dname, "pbmc3k-half", fraction=args.fraction, seed=args.seed)
    rows += evaluate(
        sg.models.load("pbmc-demo"),
        evals["kang_ifnb"],
        "kang_ifnb",
        "pbmc-demo",
        fraction=args.fraction,
        seed=args.seed,
    )
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "markers.csv", index=False)
    text = summarize(table)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
