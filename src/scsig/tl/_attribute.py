"""``sg.tl.attribute``: per-cell, per-gene attributions of a foundation model's embedding."""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse

from .. import _logging as logg
from .._constants import IN_MODEL_SUFFIX, LAYER_PREFIX, METHODS, UNS_KEY
from .._docs import doc_adata, doc_copy, doc_layer_counts, doc_mod, doc_params
from .._settings import settings
from .._utils import get_matrix, resolve_adata, wrap_return
from ..pp._align import align_genes
from ..pp._prepare import model_input
from ..pp._validate import check_counts as _check_counts
from ..pp._validate import warn_empty_cells

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..models import FoundationModel

__all__ = ["DegenerateAttributionError", "attribute"]

DEGENERATE_RATIO = 1e-3
"""Attributions whose total raw mass is below this fraction of the target's change are degenerate."""

_GRADIENT_AT_INPUT = {"ixg": "input x gradient", "dl": "DeepLIFT"}


class DegenerateAttributionError(ValueError):
    """The attributions carry no signal: the target's gradient at the input is (numerically) zero."""


def _default_batch_size(model: FoundationModel, method: str, n_steps: int, engine: str) -> int:
    """Cells per batch from :attr:`scsig.settings.memory_budget_gb` (or ``settings.batch_size``)."""
    if settings.batch_size is not None:
        return int(settings.batch_size)
    budget = settings.memory_budget_gb * 1e9
    if engine == "fast":
        from ..attribution._fast import bytes_per_cell

        # the batch's counts, normalized input and output (CSR, with copies; ~10 % of the genes
        # expressed) and the fast path's dense per-cell work; its per-point arrays have a fixed
        # size (~60 MB at SCimilarity's shape). Beyond ~500 cells the first layer's output leaves the caches.
        per_cell = bytes_per_cell(model, method, n_steps) + 48 * model.n_genes // 10
        return int(np.clip((budget - 64e6) // max(per_cell, 1), 1, 512))
    widths = [p.shape[0] for p in model.encoder.parameters() if p.ndim == 2]
    # floats per path point: input, its gradient and a dense copy, plus activations and their gradients
    per_row = 4 * (3 * model.n_genes + 4 * sum(widths))
    rows = max(1, int(budget // per_row))
    steps = n_steps if method == "ig" else 2
    return int(np.clip(rows // steps, 1, 4096))


@contextlib.contextmanager
def _threads(n_jobs: int | None, *, numba: bool = False) -> Iterator[None]:
    """Use ``n_jobs`` torch threads (and numba threads for the fast path) inside the block."""
    import torch

    if n_jobs is None:
        yield
        return
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


def _in_memory(x: Any) -> bool:
    return isinstance(x, np.ndarray) or sparse.issparse(x)


def _rows(counts: Any, lo: int, hi: int) -> np.ndarray | sparse.spmatrix:
    """Rows ``lo:hi`` as an in-memory matrix: in-memory, h5py/zarr-backed (anndata) or dask arrays."""
    chunk = counts[lo:hi]
    if hasattr(chunk, "compute"):  # dask
        chunk = chunk.compute()
    if not (isinstance(chunk, np.ndarray) or sparse.issparse(chunk)):
        chunk = np.asarray(chunk)
    return chunk


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


class _CSRBuilder:
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


def _check_degenerate(raw_mass: np.ndarray, delta: np.ndarray, method: str, target: str) -> str | None:
    """A message when the attributions are float noise relative to the target's change, else None."""
    ok = delta > 1e-6
    if not ok.any():
        return None
    ratio = float(np.median(raw_mass[ok] / delta[ok]))
    if ratio >= DEGENERATE_RATIO:
        return None
    name = _GRADIENT_AT_INPUT.get(method, method)
    return (
        f"The {name} attributions are degenerate: their total mass per cell is {ratio:.1e} of the target's change "
        f"|t(x) - t(0)|, i.e. floating-point noise. With target={target!r} the target is maximal at the input "
        "itself, so its gradient there is analytically zero, and rescaling each cell to target_sum would turn "
        "that noise into fake attributions. Use method='ig' (integrated gradients integrates along the path from "
        f"the baseline), or choose target='embedding_distance' explicitly for method={method!r}."
    )


@doc_params(doc_adata=doc_adata, doc_layer_counts=doc_layer_counts, doc_mod=doc_mod, doc_copy=doc_copy)
def attribute(
    adata: Any,
    model: FoundationModel | str,
    *,
    method: Literal["ig", "dl", "ixg"] = "ig",
    layer: str | None = None,
    target: Literal["self_similarity", "embedding_distance"] | Callable | None = None,
    n_steps: int = 50,
    batch_size: int | None = None,
    target_sum: float = 1000.0,
    gene_symbols: str | None = None,
    min_overlap: int | None = None,
    check_counts: bool = True,
    engine: Literal["auto", "captum", "fast"] = "auto",
    on_degenerate: Literal["raise", "warn"] = "raise",
    key_added: str | None = None,
    progress: bool | None = None,
    mod: str = "rna",
    copy: bool = False,
) -> Any:
    r"""Attribute each cell's foundation-model embedding to its genes.

    For each cell :math:`x` (raw counts, normalized by the model's recipe in its gene order),
    the attribution method explains the scalar target :math:`t` -- by default the published
    self-similarity :math:`t(x') = \sum_k |z_k f(x')_k|` with :math:`z = f(x)` fixed -- against a zero
    baseline. Integrated gradients (``"ig"``) uses captum's defaults (Gauss-Legendre, ``n_steps``
    points); ``"dl"`` is DeepLIFT and ``"ixg"`` input x gradient. The attributions' absolute
    values are rescaled so that each cell sums to ``target_sum`` (cells with no counts stay 0).
    Values are non-negative: a gene's share of ``target_sum`` in how the model sees that cell.

    Parameters
    ----------
    {doc_adata}
    model
        A :class:`~scsig.models.FoundationModel`, or a path that :func:`scsig.models.load` reads.
    method
        ``"ig"`` integrated gradients, ``"dl"`` DeepLIFT, ``"ixg"`` input x gradient.
    {doc_layer_counts}
    target
        What is attributed. ``None`` uses the model's default (``"self_similarity"``).
        ``"embedding_distance"`` is :math:`\lVert f(x') - f(0) \rVert_2`, which ``"dl"`` and ``"ixg"``
        need: under self-similarity their attributions are degenerate (see ``on_degenerate``).
        A callable ``(embedding, reference) -> (n,)`` tensor is used as is.
    n_steps
        Integration points for ``"ig"``.
    batch_size
        Cells per batch. ``None`` uses :attr:`scsig.settings.batch_size`, or derives it from
        :attr:`scsig.settings.memory_budget_gb` (the working memory of one batch).
    target_sum
        Each cell's attributions sum to this.
    gene_symbols
        Column of ``adata.var`` holding the names the model uses, when ``var_names`` differ.
    min_overlap
        Fewest model genes that must be found in the data.
    check_counts
        Refuse input that is not raw counts (negative, NaN/inf or non-integer values).
    engine
        ``"auto"`` takes the exact fast path for SCimilarity-architecture and scvi-tools encoders on the CPU
        (integrated gradients with any target; input x gradient and DeepLIFT with a target other
        than self-similarity) and captum otherwise; ``"captum"`` forces captum; ``"fast"`` requires
        the fast path (it also covers plain :class:`torch.nn.Sequential` encoders that start with an
        affine layer). The fast path computes the same quantity as captum -- integrated gradients
        with captum's Gauss-Legendre points and weights -- using that the first layer is affine, the
        input sparse and the first activation piecewise linear; it differs from captum by float32
        rounding only (relative differences around ``1e-6`` per cell; more in the rare cell where
        captum's float32 sums put a hidden unit on the wrong side of its kink at one path point --
        the fast path decides those signs in float64; 9e-5 row-L1 at most over 1,000 cells of
        ``benchmarks/attribution.py``). Threads follow
        :attr:`scsig.settings.n_jobs` (torch and numba).
    on_degenerate
        What to do when the attributions are float noise (raw mass below ``1e-3`` of
        :math:`|t(x) - t(0)|`): ``"raise"`` a :class:`DegenerateAttributionError`, or ``"warn"`` and
        write them anyway.
    key_added
        Layer to write; default ``f"attr_{{method}}"``.
    progress
        Show a progress bar; ``None`` follows :attr:`scsig.settings.progress`.
    {doc_mod}
    {doc_copy}

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    ``adata.layers[key_added]``
        CSR float32 attributions over ``adata.var`` (genes outside the model are 0).
    ``adata.var[f"{{key_added}}_in_model"]``
        Whether the model knows each gene.
    ``adata.uns["scsig"]["layers"][key_added]``
        Provenance: model (name, checksum, gene-order hash), method, target, baseline, ``n_steps``,
        ``target_sum``, the input layer, the gene overlap and the package version.

    Notes
    -----
    The cells are read, normalized and attributed one batch at a time, so ``adata`` may be opened
    with ``anndata.read_h5ad(path, backed="r")`` or hold a dask array in ``X`` / ``layer``: only
    one batch of counts is in memory at once, and for such input the counts checks (and the
    zero-count warning) run batch by batch. The result is held in memory as a CSR layer with at
    most as many entries as the input (attributions are zero where a cell has no counts); with a
    backed AnnData it is not written to the file: call ``adata.write_h5ad(...)`` or
    :func:`anndata.io.write_elem` to store it.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, progress=False)
    >>> adata.layers["attr_ig"].sum(axis=1)[:2].round().tolist()
    [[1000.0], [1000.0]]
    """
    import torch

    from .. import __version__
    from ..attribution import TargetModule, normalize_rows
    from ..attribution._engine import CellGroups, compute_batch, pick_engine
    from ..models import FoundationModel, load

    if method not in METHODS:
        msg = f"Unknown attribution method {method!r}; use one of {list(METHODS)} (ig: integrated gradients, dl: DeepLIFT, ixg: input x gradient)."
        raise ValueError(msg)
    if on_degenerate not in ("raise", "warn"):
        msg = f"on_degenerate must be 'raise' or 'warn', not {on_degenerate!r}."
        raise ValueError(msg)
    if n_steps < 1:
        msg = f"n_steps must be a positive integer, got {n_steps}."
        raise ValueError(msg)
    if not (np.isfinite(target_sum) and target_sum > 0):
        msg = f"target_sum must be a positive number (each cell's attributions sum to it), got {target_sum!r}."
        raise ValueError(msg)
    if batch_size is not None and batch_size < 1:
        msg = f"batch_size must be a positive number of cells, got {batch_size!r}; pass None to derive it from memory."
        raise ValueError(msg)
    if not isinstance(model, FoundationModel):
        model = load(model)
    target = model.default_target if target is None else target
    module = TargetModule(model.encoder, target)  # validates the target

    container, data = resolve_adata(adata, mod=mod, copy=copy)
    counts = get_matrix(data, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    alignment = align_genes(data, model, gene_symbols=gene_symbols, min_overlap=min_overlap)
    in_memory = _in_memory(counts)
    if in_memory:
        if sparse.issparse(counts) and counts.format != "csr":
            counts = sparse.csr_matrix(counts)
        if check_counts:
            _check_counts(counts, where=where, require_integer=model.preprocessing.requires_counts)
    in_model = alignment.var_in_model

    key = key_added or f"{LAYER_PREFIX}{method}"
    if layer is not None and key == layer:
        msg = f"key_added={key!r} would overwrite the counts layer it reads (layer={layer!r}); choose another name."
        raise ValueError(msg)
    chosen = pick_engine(model, method, module, engine, device=settings.device)
    if batch_size is None:
        batch_size = _default_batch_size(model, method, n_steps, chosen)
    batch_size = max(1, int(batch_size))
    show = settings.progress if progress is None else progress
    start = logg.info(
        f"computing {method} attributions of {data.n_obs} cells with {model.name} ({chosen} engine, "
        f"batches of {batch_size})"
    )

    from .._utils._progress import tqdm

    device = torch.device(settings.device)
    module.to(device)
    # models whose encoder takes per-cell covariates (scvi-tools) give each group of cells its own encoder
    grouped = CellGroups(model, data.obs, target).to(device) if hasattr(model, "cell_groups") else None
    n_obs, n_vars = data.n_obs, data.n_vars
    model_to_var = np.full(model.n_genes, -1, dtype=np.int64)
    var_idx = np.flatnonzero(in_model)
    model_to_var[alignment.var_to_model[var_idx]] = var_idx
    builder = _CSRBuilder(n_vars, _nnz_bound(counts))
    workspace = None
    if chosen == "fast":
        from ..attribution._fast import Workspace

        workspace = Workspace()
    totals = np.zeros(n_obs, dtype=np.float64)
    with (
        _threads(settings.n_jobs, numba=chosen == "fast"),
        tqdm(total=n_obs, disable=not show, desc=f"attribute ({method})", unit="cells") as bar,
    ):
        for lo in range(0, n_obs, batch_size):
            hi = min(lo + batch_size, n_obs)
            chunk = _rows(counts, lo, hi)
            if check_counts and not in_memory:
                _check_counts(
                    chunk, where=f"{where} (cells {lo}-{hi - 1})", require_integer=model.preprocessing.requires_counts
                )
            x, totals[lo:hi] = model_input(chunk, alignment, model, validate=False)
            del chunk
            raw, t_in, t_base = (compute_batch if grouped is None else grouped.batch_fn(lo, hi))(
                chosen,
                module,
                model,
                x,
                method=method,
                n_steps=n_steps,
                device=device,
                sparse_output=True,
                workspace=workspace,
            )
            del x
            if lo == 0:
                mass = np.asarray(abs(raw).sum(axis=1), dtype=np.float64).ravel()
                problem = _check_degenerate(mass, np.abs(t_in - t_base), method, module.target_name)
                if problem is not None:
                    if on_degenerate == "raise":
                        raise DegenerateAttributionError(problem)
                    warnings.warn(problem, UserWarning, stacklevel=2)
            normed = normalize_rows(raw, target_sum)
            del raw
            builder.append(_to_var_csr(normed, model_to_var, n_vars))
            bar.update(hi - lo)

    warn_empty_cells(totals, data.obs_names, what="in the model's genes")
    data.layers[key] = builder.build()
    data.var[f"{key}{IN_MODEL_SUFFIX}"] = in_model
    record = {
        "method": method,
        "target": module.target_name,
        "baseline": "zeros",
        "n_steps": int(n_steps) if method == "ig" else 0,
        "integration": "gausslegendre" if method == "ig" else "none",
        "target_sum": float(target_sum),
        "input_layer": layer if layer is not None else "X",
        "gene_symbols": gene_symbols if gene_symbols is not None else "var_names",
        "engine": chosen,
        "model": model.describe(),
        "gene_order_hash": model.gene_order_hash,
        "overlap": alignment.report(),
        "scsig_version": __version__,
    }
    uns = data.uns.setdefault(UNS_KEY, {})
    uns.setdefault("layers", {})[key] = record
    logg.info(
        f"    finished: added layers[{key!r}], var[{key + IN_MODEL_SUFFIX!r}], uns['scsig']['layers'][{key!r}]",
        time=start,
    )
    return wrap_return(container, copy=copy)
