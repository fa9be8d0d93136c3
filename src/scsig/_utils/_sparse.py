"""Sparse-matrix plumbing shared by the public functions."""

from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = ["CSRBuilder"]


class CSRBuilder:
    """Append CSR row blocks; one copy at the end (or none when the capacity is known)."""

    def __init__(self, n_cols: int, capacity: int | None) -> None:
        self.n_cols = n_cols
        self.indptr = [np.zeros(1, dtype=np.int64)]
        self.nnz = 0
        self.n_rows = 0
        self.capacity = capacity
        if capacity is not None:
            self.data = np.empty(capacity, dtype=np.float32)
            self.indices = np.empty(capacity, dtype=np.int32)
        else:
            self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def append(self, block: sparse.csr_matrix) -> None:
        """Add the rows of ``block`` (CSR with ``n_cols`` columns)."""
        k = block.nnz
        if self.capacity is not None and self.nnz + k <= self.capacity:
            self.data[self.nnz : self.nnz + k] = block.data
            self.indices[self.nnz : self.nnz + k] = block.indices
        else:
            if self.capacity is not None:  # more entries than the input had: switch to parts
                self.parts = [(self.data[: self.nnz].copy(), self.indices[: self.nnz].copy())]
                self.capacity = None
                del self.data, self.indices
            self.parts.append((block.data.astype(np.float32, copy=False), block.indices.astype(np.int32, copy=False)))
        self.indptr.append(block.indptr[1:].astype(np.int64) + self.nnz)
        self.nnz += k
        self.n_rows += block.shape[0]

    def build(self) -> sparse.csr_matrix:
        """The CSR matrix of all rows appended (float32 data, int32 or int64 indptr); call once."""
        if self.capacity is not None:
            data, indices = self.data, self.indices
            del self.data, self.indices
            if self.nnz < self.capacity:  # shrink in place (no second copy of the layer)
                data.resize(self.nnz, refcheck=False)
                indices.resize(self.nnz, refcheck=False)
        else:
            data = np.concatenate([p[0] for p in self.parts]) if self.parts else np.zeros(0, np.float32)
            indices = np.concatenate([p[1] for p in self.parts]) if self.parts else np.zeros(0, np.int32)
        indptr = np.concatenate(self.indptr)
        if self.nnz < np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)
        out = sparse.csr_matrix((data, indices, indptr), shape=(self.n_rows, self.n_cols))
        out.has_sorted_indices = True
        return out
