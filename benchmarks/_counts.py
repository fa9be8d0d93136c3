"""Synthetic raw counts shared by the attribution benchmarks (``attribution.py``, ``attribution_backends.py``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

N_GENES = 28231
"""SCimilarity's number of genes (the default width of the counts)."""


def synthetic_counts(n_cells: int, n_genes: int = N_GENES, seed: int = 0, block: int = 500) -> sp.csr_matrix:
    """Gamma-Poisson counts with log-normal gene means: about 2,100 expressed genes and 4,000 UMIs per cell."""
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(mean=-4.0, sigma=2.0, size=n_genes)
    parts = []
    for lo in range(0, n_cells, block):
        n = min(block, n_cells - lo)
        size = rng.lognormal(mean=0.0, sigma=0.35, size=(n, 1))
        lam = rng.gamma(2.0, (mu[None, :] * size) / 2.0)
        parts.append(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    return sp.vstack(parts, format="csr")
