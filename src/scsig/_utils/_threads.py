"""Thread counts of torch and numba for the duration of a block."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["threads"]


@contextlib.contextmanager
def threads(n_jobs: int | None, *, numba: bool = False) -> Iterator[None]:
    """Use ``n_jobs`` torch threads (and numba threads with ``numba=True``) inside the block.

    ``None`` leaves both as they are. The previous counts are restored on exit, also after an error;
    numba's count is capped at its ``NUMBA_NUM_THREADS``.
    """
    if n_jobs is None:
        yield
        return
    import torch

    n = max(1, int(n_jobs))
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    numba_before = None
    if numba:
        import numba as nb

        numba_before = nb.get_num_threads()
        nb.set_num_threads(min(n, nb.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if numba_before is not None:
            import numba as nb

            nb.set_num_threads(numba_before)
