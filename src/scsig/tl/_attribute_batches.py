"""The attribution loop: one batch of cells at a time, from counts to normalized attributions, and where the blocks go."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .._settings import settings
from .._utils import CSRBuilder as _CSRBuilder
from .._utils import threads as _threads
from .._utils import to_memory
from .._utils._warn import user_stacklevel
from ..pp._prepare import model_input
from ..pp._validate import check_counts as _check_counts
from ._completeness import DegenerateAttributionError, _check_degenerate, _completeness_gap, check_rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from anndata import AnnData

    from ._attribute_run import _Run

__all__: list[str] = []


def _batches(
    run: _Run, *, on_cells: Callable[[int], None] | None = None, rows: tuple[int, int] | None = None
) -> Iterator[sparse.csr_matrix]:
    """Normalized attributions over the model's genes, one CSR per batch of cells, in cell order.

    Reads, checks, normalizes and attributes one batch at a time (the first batch is checked for
    degenerate attributions); fills ``run.totals`` and calls ``on_cells(n)`` after each batch.
    ``rows=(start, stop)`` attributes only those cells; ``start`` must be a multiple of the batch
    size, so the batches (and the values) are those of the whole run.
    """
    import torch

    device = run.device if run.device is not None else torch.device(settings.device)
    run.module.to(device)
    start, stop = (0, run.totals.size) if rows is None else rows
    if start % run.batch_size:  # pragma: no cover - internal consistency
        msg = f"rows start at {start}, not a multiple of the batch size {run.batch_size}"
        raise ValueError(msg)
    with _threads(settings.n_jobs, numba=run.engine == "fast"):
        for lo in range(start, stop, run.batch_size):
            hi = min(lo + run.batch_size, stop)
            yield _attribute_batch(run, lo, hi, device)
            if on_cells is not None:
                on_cells(hi - lo)


def _attribute_batch(run: _Run, lo: int, hi: int, device: Any) -> sparse.csr_matrix:
    """Cells ``lo:hi``: read and check their counts, normalize them, attribute, check, rescale each row."""
    from ..attribution import normalize_rows
    from ..attribution._engine import compute_batch

    chunk = to_memory(run.counts[lo:hi])
    if not run.in_memory:  # negative or NaN input is refused even with check_counts=False
        requires_integer = run.check_counts and run.model.preprocessing.requires_counts
        _check_counts(chunk, where=f"{run.where} (cells {lo}-{hi - 1})", require_integer=requires_integer)
    x, run.totals[lo:hi] = model_input(chunk, run.alignment, run.model, validate=False)
    del chunk
    batch_fn = compute_batch if run.grouped is None else run.grouped.batch_fn(lo, hi)
    stats: dict[str, Any] = {}
    extra = {"stats": stats} if run.dropped is not None else {}
    raw, t_in, t_base = batch_fn(
        run.engine,
        run.module,
        run.model,
        x,
        method=run.method,
        n_steps=run.n_steps,
        device=device,
        sparse_output=True,
        workspace=run.workspace,
        **extra,
    )
    if run.dropped is not None and "dropped" in stats:
        run.dropped[lo:hi] = stats["dropped"]
    del x
    run.no_signal[lo:hi] = check_rows(raw, t_in, t_base, run.cells[lo:hi])
    if lo == 0:
        _handle_degenerate(run, raw, t_in, t_base)
    if run.method == "ig":
        run.gaps[lo:hi] = _completeness_gap(raw, t_in, t_base)
    normed = normalize_rows(raw, run.target_sum)
    del raw
    return normed


def _handle_degenerate(run: _Run, raw: Any, t_in: np.ndarray, t_base: np.ndarray) -> None:
    """Raise :class:`DegenerateAttributionError` (or warn, with ``on_degenerate="warn"``) when the batch is float noise."""
    mass = np.asarray(abs(raw).sum(axis=1), dtype=np.float64).ravel()
    problem = _check_degenerate(mass, np.abs(t_in - t_base), run.method, run.module.target_name)
    if problem is None:
        return
    if run.on_degenerate == "raise":
        raise DegenerateAttributionError(problem)
    # the caller of sg.tl.attribute: here <- _attribute_batch <- _batches <- attribute's _fill <- attribute <- caller
    warnings.warn(problem, UserWarning, stacklevel=user_stacklevel())


def _to_var_csr(mat: sparse.csr_matrix, model_to_var: np.ndarray, n_vars: int) -> sparse.csr_matrix:
    """Re-index the columns of a CSR over model genes onto the data's genes (dropping genes it lacks)."""
    cols = model_to_var[mat.indices]
    keep = cols >= 0
    if not keep.all():
        mat = sparse.csr_matrix(
            (mat.data[keep], cols[keep], np.r_[0, np.cumsum(keep)][mat.indptr]), shape=(mat.shape[0], n_vars)
        )
    else:
        mat = sparse.csr_matrix((mat.data, cols, mat.indptr), shape=(mat.shape[0], n_vars))
    mat.has_sorted_indices = False
    mat.sort_indices()
    return mat


def _nnz_bound(counts: Any) -> int | None:
    """Stored entries of the input when known cheaply (the layer has at most as many)."""
    if sparse.issparse(counts):
        return int(counts.nnz)
    for attr in ("nnz",):
        try:
            value = getattr(counts, attr)
        except Exception:  # noqa: BLE001 - backed datasets may not know it
            value = None
        if isinstance(value, int | np.integer):
            return int(value)
    group = getattr(counts, "group", None)
    if group is not None and "indptr" in group:
        return int(group["indptr"][-1])
    return None


class _MemorySink:
    """The layer in memory: CSR blocks over ``adata.var`` appended to a :class:`_CSRBuilder`."""

    def __init__(self, n_vars: int, capacity: int | None) -> None:
        self._builder = _CSRBuilder(n_vars, capacity)

    def append(self, block: sparse.csr_matrix) -> None:
        self._builder.append(block)

    def finish(self, **_provenance: Any) -> sparse.csr_matrix:
        return self._builder.build()

    def abort(self) -> None:
        self._builder = None


def _open_sink(data: AnnData, run: _Run, store: str | Path | None) -> Any:
    """Where the layer's blocks go: memory, or the ``.h5ad`` file ``store`` written batch by batch."""
    if store is None:
        return _MemorySink(data.n_vars, _nnz_bound(run.counts))
    from ._ondisk import LayerWriter

    return LayerWriter(store, key=run.key, obs=data.obs, var=data.var, n_vars=data.n_vars)
