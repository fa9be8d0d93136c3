"""Row normalization of attribution matrices."""

from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = ["normalize_rows"]


def normalize_rows(attr: np.ndarray | sparse.spmatrix, target_sum: float = 1e3) -> sparse.csr_matrix:
    """Absolute values, each row rescaled to sum ``target_sum``; all-zero rows stay zero.

    Returns a float32 CSR matrix. Sums are taken in float64.
    """
    mat = sparse.csr_matrix(attr, dtype=np.float64)
    np.abs(mat.data, out=mat.data)
    mat.eliminate_zeros()
    sums = np.asarray(mat.sum(axis=1)).ravel()
    scale = np.divide(float(target_sum), sums, out=np.zeros_like(sums), where=sums > 0)
    mat.data *= np.repeat(scale, np.diff(mat.indptr))
    return mat.astype(np.float32)
