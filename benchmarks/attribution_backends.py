"""Speed of the scvi-tools and scTab-SSL backends: scsig's fast path against captum on the same model.

Run through ``python benchmarks/attribution.py --mode backends [--cells N]`` (or this file directly).
Synthetic raw counts as in ``attribution.py`` (gamma-Poisson, ~7 % of genes expressed), then, in one
process on the same cores, one after the other:

- scVI: ``scvi.model.SCVI`` on 20,000 genes with 128-unit hidden layers (``--scvi-layers``, default 1 and
  2), latent 10, ``encode_covariates=True`` and a 4-level batch (so each cell's batch one-hot enters the
  encoder's first layer and, injected deeply, the later ones). Its weights are scvi-tools' initialization
  with randomized BatchNorm statistics, marked trained: speed does not depend on training. Timed:
  ``sg.tl.attribute`` with ``engine="fast"`` and ``engine="captum"``, and captum run directly on
  scvi-tools' ``z_encoder`` (integrated gradients, 50 steps, log1p input and each cell's batch index) -- the
  straightforward way to attribute the model -- at each of ``--captum-batch-sizes`` (default 50, 100, 200, 500
  cells per call), so that the fast path is compared with captum at its best batch size.
- scTab-SSL at the published shape (19,331 -> 512 -> 512 -> 256 -> 256 -> 64, SELU), random weights in
  the reference's folder layout: ``engine="fast"`` against ``engine="captum"`` at each of the same batch sizes
  (``sg.tl.attribute(batch_size=)``, captum on the same module); for the cell where they differ
  most, both are compared with integrated gradients computed in float64.

Prints cells/s, the ratios against captum at its best batch size (and which it was), and the largest row-L1 difference (rows scaled to sum 1) of the fast path to
captum on scvi-tools' module.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp  # noqa: TC002 - used at run time by the helpers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _counts import synthetic_counts
from reference_backends import write_ssl_folder

import scsig as sg


def _scvi_model(counts: sp.csr_matrix, n_layers: int, n_batch: int = 4):
    import anndata as ad
    import scvi

    from scsig.datasets._toy import randomize_batchnorm

    scvi.settings.seed = 0
    scvi.settings.verbosity = logging.ERROR
    genes = [f"GENE{i:05d}" for i in range(counts.shape[1])]
    obs = pd.DataFrame(
        {"batch": [f"b{i % n_batch}" for i in range(counts.shape[0])]}, index=[f"c{i}" for i in range(counts.shape[0])]
    )
    adata = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=genes))
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae = scvi.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=n_layers, encode_covariates=True)
    randomize_batchnorm(vae.module.z_encoder, generator=torch.Generator().manual_seed(0))
    vae.module.eval()
    vae.is_trained_ = True
    return adata, vae


def _captum_direct(vae, adata, batch_size: int = 100) -> np.ndarray:
    """Integrated gradients of the self-similarity of scvi-tools' z_encoder mean, batch by batch."""
    from captum.attr import IntegratedGradients

    enc = vae.module.z_encoder.eval()
    levels = list(vae.adata_manager.get_state_registry("batch")["categorical_mapping"])
    codes = torch.as_tensor([levels.index(b) for b in adata.obs["batch"]]).reshape(-1, 1)

    def target(x, z, b):
        return (z * enc(x, b)[0].loc).abs().sum(1)

    ig = IntegratedGradients(target)
    out = []
    for lo in range(0, adata.n_obs, batch_size):
        x = torch.as_tensor(np.log1p(adata.X[lo : lo + batch_size].toarray()), dtype=torch.float32)
        b = codes[lo : lo + batch_size]
        with torch.no_grad():
            z = enc(x, b)[0].loc
        attr = ig.attribute(x, baselines=torch.zeros_like(x), additional_forward_args=(z, b), n_steps=50)
        out.append(attr.abs().double().numpy())
    attr = np.concatenate(out)
    return attr / attr.sum(1, keepdims=True)


def _float64_ig(model, counts_row) -> np.ndarray:
    """Integrated gradients of one cell in float64 (captum on a float64 copy), rows scaled to sum 1."""
    import copy

    from captum.attr import IntegratedGradients

    enc = copy.deepcopy(model.encoder).double()
    x = torch.as_tensor(model.preprocessing.apply(counts_row).toarray(), dtype=torch.float64)
    with torch.no_grad():
        z = enc(x)
    attr = IntegratedGradients(lambda inp, z: (z * enc(inp)).abs().sum(1)).attribute(
        x, baselines=torch.zeros_like(x), additional_forward_args=(z,), n_steps=50
    )
    attr = attr.abs().numpy().ravel()
    return attr / attr.sum()


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    sg.settings.progress = False
    sg.settings.n_jobs = args.threads
    torch.set_num_threads(args.threads)
    results = {}
    counts = synthetic_counts(args.cells, n_genes=20_000)
    for n_layers in args.scvi_layers:
        adata, vae = _scvi_model(counts, n_layers)
        model = sg.models.from_scvi(vae)
        warm = adata[:8].copy()
        sg.tl.attribute(warm, model, engine="fast")
        t_fast = _timed(lambda: sg.tl.attribute(adata, model, engine="fast", key_added="fast"))  # noqa: B023
        t_capt = _timed(lambda: sg.tl.attribute(adata, model, engine="captum", key_added="captum"))  # noqa: B023
        direct_times, ref = {}, None
        for batch in args.captum_batch_sizes:
            start = time.perf_counter()
            ref = _captum_direct(vae, adata, batch_size=batch)
            direct_times[batch] = time.perf_counter() - start
        best = min(direct_times, key=direct_times.get)
        fast = adata.layers["fast"].toarray() / 1000
        results[f"scvi {n_layers} x 128 hidden"] = {
            "cells": args.cells,
            "fast_cells_per_s": args.cells / t_fast,
            "scsig_captum_cells_per_s": args.cells / t_capt,
            **{f"captum_on_module_cells_per_s_batch_{b}": args.cells / t for b, t in direct_times.items()},
            "captum_on_module_best_batch": best,
            "fast_vs_captum_on_module_best": direct_times[best] / t_fast,
            "fast_vs_scsig_captum": t_capt / t_fast,
            "max_row_l1_fast_vs_module": float(np.abs(fast - ref).sum(1).max()),
        }
    with tempfile.TemporaryDirectory() as tmp:
        genes = [f"GENE{i:05d}" for i in range(19_331)]
        folder = Path(tmp) / "ssl"
        write_ssl_folder(folder, genes)
        import anndata as ad

        x = synthetic_counts(args.cells, n_genes=len(genes))
        adata = ad.AnnData(x, var=pd.DataFrame(index=genes))
        model = sg.models.load(folder)
        sg.tl.attribute(adata[:8].copy(), model, engine="fast")
        t_fast = _timed(lambda: sg.tl.attribute(adata, model, engine="fast", key_added="fast"))
        capt_times = {}
        for batch in args.captum_batch_sizes:
            capt_times[batch] = _timed(
                lambda b=batch: sg.tl.attribute(adata, model, engine="captum", key_added="captum", batch_size=b)
            )
        best = min(capt_times, key=capt_times.get)
        diff = np.abs(adata.layers["fast"] - adata.layers["captum"]).sum(1).A1 / 1000
        worst = int(diff.argmax())
        truth = _float64_ig(model, x[worst])
        fast_l1 = float(np.abs(adata.layers["fast"][worst].toarray().ravel() / 1000 - truth).sum())
        capt_l1 = float(np.abs(adata.layers["captum"][worst].toarray().ravel() / 1000 - truth).sum())
        results["sctab-ssl 19331-512-512-256-256-64"] = {
            "cells": args.cells,
            "fast_cells_per_s": args.cells / t_fast,
            **{f"captum_cells_per_s_batch_{b}": args.cells / t for b, t in capt_times.items()},
            "captum_best_batch": best,
            "fast_vs_captum_best": capt_times[best] / t_fast,
            "max_row_l1_fast_vs_captum": float(diff.max()),
            "worst_cell_fast_vs_float64": fast_l1,
            "worst_cell_captum_vs_float64": capt_l1,
        }
    for name, r in results.items():
        print(name, json.dumps({k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in r.items()}))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scvi-layers", type=int, nargs="*", default=[1, 2], help="scVI encoder depths to time")
    parser.add_argument(
        "--captum-batch-sizes",
        type=int,
        nargs="+",
        default=[50, 100, 200, 500],
        help="cells per captum call to sweep (the ratio is against the fastest)",
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    add_arguments(p)
    sys.exit(run(p.parse_args()))
