"""scTab-SSL and scVI backends against the reference package (``sc-signature``, import ``SIGnature``).

Both models are made here and run by both tools on the same raw counts (the first ``--cells`` cells of
``sg.datasets.kang_muscat()``), the reference in its own environment (``--ref-python``, default
``../refvenv/bin/python`` beside the repository, with sc-signature 1.0.0 and scvi-tools):

- scTab-SSL: a random-weight folder in the layout the reference's ``SSLWrapper`` reads (``var.parquet``
  with ``feature_name``, a state dict in a file named ``classifier``; Linear layers
  n_genes -> 512 -> 512 -> 256 -> 256 -> 64 with SELU between, followed by decoder tensors the encoder
  does not use), over 90 % of the data's genes in shuffled order plus two it lacks.
  Reference: ``SSLWrapper(folder).preprocess_adata`` then ``calculate_attributions(method="ig")``;
  scsig: ``sg.tl.attribute(adata, folder)``.
- scVI: an SCVI trained here for a few epochs with ``batch_key="sample_id"`` (covariates not encoded,
  scvi-tools' default) and saved. Reference: ``SCVIWrapper(folder)`` (``preprocess_adata``,
  ``calculate_attributions``), which feeds counts to the encoder without scVI's log1p; scsig:
  ``sg.tl.attribute(adata, sg.models.from_scvi(folder, input="counts"))``. The default
  ``input="encoder"`` (log1p counts, what scVI's encoder sees) is also run and its distance to the
  reference printed, to show how much that difference matters.

Prints, per backend, the largest and median row-L1 difference between the two (each row scaled to sum 1)
and the run times.

    python benchmarks/reference_backends.py --cells 300
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
import textwrap
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import scsig as sg

SSL_SIZES = (512, 512, 256, 256, 64)

REFERENCE = textwrap.dedent(
    """
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import anndata as ad, numpy as np, scipy.sparse as sp, torch
    torch.set_num_threads(int(sys.argv[5]))
    kind, folder, h5ad, out = sys.argv[1:5]
    adata = ad.read_h5ad(h5ad)
    adata.layers["counts"] = adata.X.copy()
    start = time.perf_counter()
    if kind == "ssl":
        from SIGnature.models.ssl import SSLWrapper
        wrapper = SSLWrapper(folder)
        prepped = wrapper.preprocess_adata(adata, gene_overlap_threshold=10)
        attr = wrapper.calculate_attributions(prepped.X, method="ig", disable_tqdm=True)
    else:
        from SIGnature.models.scvi import SCVIWrapper
        wrapper = SCVIWrapper(folder)
        prepped = wrapper.preprocess_adata(adata)
        attr = wrapper.calculate_attributions(prepped, method="ig", disable_tqdm=True)
    seconds = time.perf_counter() - start
    sp.save_npz(out, sp.csr_matrix(attr))
    print(json.dumps({"seconds": seconds, "genes": list(map(str, wrapper.gene_order))}))
    """
)


def write_ssl_folder(folder: Path, genes: list[str], seed: int = 0) -> None:
    """Random weights in the reference's scTab-SSL layout (written with torch and pandas, not scsig)."""
    folder.mkdir(parents=True)
    pd.DataFrame({"feature_name": genes}).to_parquet(folder / "var.parquet")
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    width = len(genes)
    for i, out in enumerate(SSL_SIZES):
        state[f"encoder.{3 * i}.weight"] = torch.randn(out, width, generator=gen) * (1.5 / np.sqrt(width))
        state[f"encoder.{3 * i}.bias"] = torch.randn(out, generator=gen) * 0.1
        width = out
    state["decoder.0.weight"] = torch.randn(256, width, generator=gen)
    state["decoder.0.bias"] = torch.zeros(256)
    torch.save(state, folder / "classifier")


def train_scvi(adata, folder: Path, epochs: int) -> None:
    import scvi

    scvi.settings.seed = 0
    scvi.settings.verbosity = logging.ERROR
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data, batch_key="sample_id")
    vae = scvi.model.SCVI(data, n_hidden=128, n_latent=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
    vae.save(str(folder))


def run_reference(args, kind: str, folder: Path, h5ad: Path, tmp: Path) -> tuple[sp.csr_matrix, list[str], float]:
    out = tmp / f"ref_{kind}.npz"
    res = subprocess.run(
        [args.ref_python, "-c", REFERENCE, kind, str(folder), str(h5ad), str(out), str(args.threads)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    info = json.loads(res.stdout.strip().splitlines()[-1])
    return sp.load_npz(out).tocsr(), info["genes"], info["seconds"]


def compare(ref: sp.csr_matrix, ref_genes: list[str], adata, key: str) -> dict:
    """Row-L1 between the reference (model gene order) and scsig's layer (data genes), rows scaled to sum 1."""
    mine = pd.DataFrame(adata.layers[key].toarray(), columns=adata.var_names)
    mine = mine.reindex(columns=ref_genes, fill_value=0.0).to_numpy()
    theirs = ref.toarray()
    mine = mine / np.maximum(mine.sum(1, keepdims=True), 1e-30)
    theirs = theirs / np.maximum(theirs.sum(1, keepdims=True), 1e-30)
    l1 = np.abs(mine - theirs).sum(1)
    return {"max_row_l1": float(l1.max()), "median_row_l1": float(np.median(l1))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_ref = Path(__file__).resolve().parents[2] / "refvenv" / "bin" / "python"
    parser.add_argument("--ref-python", default=str(default_ref))
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10, help="scVI training epochs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sg.settings.progress = False
    sg.settings.n_jobs = args.threads
    torch.set_num_threads(args.threads)

    adata = sg.datasets.kang_muscat()[: args.cells].copy()
    results = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        h5ad = tmp / "counts.h5ad"
        adata.write_h5ad(h5ad)

        rng = np.random.default_rng(0)
        genes = [*adata.var_names[rng.permutation(adata.n_vars)[: int(adata.n_vars * 0.9)]], "NOTINDATA1", "NOTINDATA2"]
        ssl = tmp / "ssl"
        write_ssl_folder(ssl, list(rng.permutation(genes)))
        ref, ref_genes, ref_s = run_reference(args, "ssl", ssl, h5ad, tmp)
        for engine in ("fast", "captum"):
            start = time.perf_counter()
            sg.tl.attribute(adata, ssl, engine=engine, key_added=f"ssl_{engine}")
            seconds = time.perf_counter() - start
            results[f"sctab-ssl ({engine} engine)"] = {
                **compare(ref, ref_genes, adata, f"ssl_{engine}"),
                "scsig_s": seconds,
                "reference_s": ref_s,
            }

        folder = tmp / "scvi"
        train_scvi(adata, folder, args.epochs)
        ref, ref_genes, ref_s = run_reference(args, "scvi", folder, h5ad, tmp)
        for mode in ("counts", "encoder"):
            start = time.perf_counter()
            sg.tl.attribute(adata, sg.models.from_scvi(folder, input=mode), key_added=f"scvi_{mode}")
            seconds = time.perf_counter() - start
            results[f"scvi (input={mode!r})"] = {
                **compare(ref, ref_genes, adata, f"scvi_{mode}"),
                "scsig_s": seconds,
                "reference_s": ref_s,
            }
    for name, r in results.items():
        print(
            f"{name:28s} max row-L1 {r['max_row_l1']:.2e}  median {r['median_row_l1']:.2e}  "
            f"scsig {r['scsig_s']:.2f} s  reference {r['reference_s']:.2f} s"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
