"""Run the reference package's SCimilarity IG on raw counts; meant for the benchmark venv only.

Usage: python _reference_ig.py MODEL_FOLDER COUNTS_H5AD OUT_NPZ [METHOD]
Writes the reference's normalized attributions (cells x model genes) to OUT_NPZ and prints timing JSON.
"""

from __future__ import annotations

import json
import sys
import time

import anndata as ad
import scipy.sparse as sp
from SIGnature.models.scimilarity import SCimilarityWrapper

model_path, h5ad, out, *rest = sys.argv[1:]
method = rest[0] if rest else "ig"
adata = ad.read_h5ad(h5ad)
adata.layers["counts"] = adata.X.copy()
wrapper = SCimilarityWrapper(model_path)
prepared = wrapper.preprocess_adata(adata, gene_overlap_threshold=1)
start = time.perf_counter()
attr = wrapper.calculate_attributions(prepared.X, method=method, disable_tqdm=True)
elapsed = time.perf_counter() - start
sp.save_npz(out, sp.csr_matrix(attr))
print(json.dumps({"seconds": elapsed, "n_cells": int(adata.n_obs), "genes": list(prepared.var_names[:3])}))
