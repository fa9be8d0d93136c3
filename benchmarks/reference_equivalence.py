"""Check that ``sg.tl.attribute(method="ig")`` reproduces the reference package on a SCimilarity-format folder.

The folder is written here with random weights and non-trivial BatchNorm statistics over the Kang data's
genes (plus genes the data lacks, in shuffled order). The reference (``sc-signature``, import ``SIGnature``)
runs in its own environment (``--ref-python``), on the same raw counts, through its own preprocessing.

    python benchmarks/reference_equivalence.py --ref-python /path/to/refvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

import scsig as sg
from scsig.datasets._toy import randomize_batchnorm
from scsig.models import FoundationModel, SCimilarityEncoder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref-python", required=True, help="python of an environment with sc-signature==1.0.0")
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--method", default="ig")
    args = parser.parse_args()

    adata = sg.datasets.kang_ifnb()
    adata = adata[: args.cells].copy()
    rng = np.random.default_rng(0)
    genes = [*adata.var_names[rng.permutation(adata.n_vars)[: int(adata.n_vars * 0.9)]], "NOTINDATA1", "NOTINDATA2"]
    genes = list(rng.permutation(genes))
    torch.manual_seed(0)
    enc = SCimilarityEncoder(len(genes), args.hidden, args.latent)
    randomize_batchnorm(enc)
    model = FoundationModel(enc, genes, name="random")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        model.save(folder)
        (folder / "label_ints.csv").write_text(",0\n0,a\n")
        counts = Path(tmp) / "counts.h5ad"
        adata.write_h5ad(counts)
        out = Path(tmp) / "ref.npz"
        res = subprocess.run(
            [
                args.ref_python,
                str(Path(__file__).with_name("_reference_ig.py")),
                str(folder),
                str(counts),
                str(out),
                args.method,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        info = json.loads(res.stdout.strip().splitlines()[-1])
        ref = sp.load_npz(out).toarray().astype(np.float64)

        loaded = sg.models.load(folder)
        kwargs = {} if args.method == "ig" else {"on_degenerate": "warn"}
        sg.tl.attribute(adata, loaded, method=args.method, progress=False, **kwargs)
    ours_var = adata.layers[f"attr_{args.method}"].toarray().astype(np.float64)
    ours = np.zeros_like(ref)
    pos = adata.var["attr_" + args.method + "_in_model"].to_numpy()
    idx = {g: i for i, g in enumerate(genes)}
    ours[:, [idx[g] for g in adata.var_names[pos]]] = ours_var[:, pos]
    row_l1 = np.abs(ours - ref).sum(1) / np.maximum(ref.sum(1), 1e-12)
    big = ref > 1e-3 * ref.max(1, keepdims=True)
    elem = np.abs(ours - ref)[big] / ref[big]
    print(f"cells {ours.shape[0]}, model genes {ours.shape[1]}, reference run {info['seconds']:.1f} s")
    print(f"row L1 relative difference: max {row_l1.max():.2e}, median {np.median(row_l1):.2e}")
    print(f"elementwise relative difference (entries > 1e-3 of row max): max {elem.max():.2e}")
    ok = row_l1.max() < 1e-4
    print("MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
