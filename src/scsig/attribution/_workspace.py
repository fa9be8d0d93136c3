"""Buffers the fast engine reuses across the batches of one attribution run."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Workspace"]


class Workspace:
    """Buffers reused by the batches of one attribution run.

    Fresh multi-megabyte arrays cost a page fault per 4 KiB page on first touch, which on virtual
    machines is a large share of a batch's time; the run's batches therefore share their large
    temporaries. Dropped with the run (it is not kept on the model).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialized C-contiguous array of ``shape``, reusing the memory of earlier calls."""
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
            buf = np.empty(max(size, 1), dtype=dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)
