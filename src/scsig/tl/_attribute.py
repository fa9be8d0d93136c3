"""``sg.tl.attribute``: per-cell, per-gene attributions of a foundation model's embedding."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse

from .. import _logging as logg
from .._constants import IN_MODEL_SUFFIX, LAYER_PREFIX, METHODS, UNS_KEY
from .._docs import doc_adata, doc_copy, doc_layer_counts, doc_mod, doc_params, doc_progress
from .._settings import settings
from .._utils import CSRBuilder as _CSRBuilder
from .._utils import check_choice, get_matrix, resolve_adata, to_memory, wrap_return
from .._utils import threads as _threads
from ..pp._align import align_genes
from ..pp._prepare import model_input
from ..pp._validate import check_counts as _check_counts
from ..pp._validate import warn_empty_cells

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from anndata import AnnData

    from ..models import FoundationModel

__all__ = ["DegenerateAttributionError", "attribute"]

DEGENERATE_RATIO = 1e-3
"""Attributions whose total raw mass is below this fraction of the target's change are degenerate."""

_GRADIENT_AT_INPUT = {"ixg": "input x gradient", "dl": "DeepLIFT"}

OnDegenerate = Literal["raise", "warn"]


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


def _in_memory(x: Any) -> bool:
    return isinstance(x, np.ndarray) or sparse.issparse(x)


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


GAP_TOLERANCE = 0.01
"""Median completeness gap of integrated gradients above which ``attribute`` warns (and ``n_steps="auto"`` aims below)."""

AUTO_STEPS = (20, 50, 100, 200, 400, 800)
"""Step counts ``n_steps="auto"`` tries, in order."""

AUTO_CELLS = 128
"""Cells ``n_steps="auto"`` measures the gap on."""


def _completeness_gap(raw: Any, t_in: np.ndarray, t_base: np.ndarray) -> np.ndarray:
    """Per cell, |sum of raw attributions - (t(x) - t(baseline))| / |t(x) - t(baseline)| (NaN when t does not change)."""
    total = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
    delta = np.asarray(t_in, dtype=np.float64).ravel() - np.asarray(t_base, dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.abs(total - delta) / np.abs(delta)
    gap[~(np.abs(delta) > 1e-12)] = np.nan
    return gap


def _gap_summary(gaps: np.ndarray) -> dict[str, float | int]:
    """Median, 90th percentile, maximum and the number of cells above :data:`GAP_TOLERANCE`."""
    ok = gaps[np.isfinite(gaps)]
    if ok.size == 0:
        return {"median": float("nan"), "p90": float("nan"), "max": float("nan"), "n_above_1pct": 0, "n_cells": 0}
    return {
        "median": float(np.median(ok)),
        "p90": float(np.percentile(ok, 90)),
        "max": float(ok.max()),
        "n_above_1pct": int((ok > GAP_TOLERANCE).sum()),
        "n_cells": int(ok.size),
    }


def _warn_gap(summary: dict, n_steps: int) -> None:
    if summary["n_cells"] and summary["median"] > GAP_TOLERANCE:
        warnings.warn(
            f"Integrated gradients' completeness gap |sum of attributions - (t(x) - t(0))| / |t(x) - t(0)| has a "
            f"median of {100 * summary['median']:.2g} % at n_steps={n_steps} ({summary['n_above_1pct']} of "
            f"{summary['n_cells']} cells above 1 %): the path integral is not converged. Raise n_steps (e.g. "
            f"n_steps={4 * n_steps}) or pass n_steps='auto'.",
            UserWarning,
            stacklevel=3,
        )


def _auto_n_steps(counts: Any, run: Callable[[Any, int, np.ndarray], np.ndarray]) -> tuple[int, list[float]]:
    """The smallest of :data:`AUTO_STEPS` whose median gap on up to :data:`AUTO_CELLS` cells is below the tolerance.

    ``run(chunk, n_steps, rows)`` returns the per-cell gaps of a chunk of counts (the cells at ``rows``). The cells are spread
    evenly over the data when it is in memory, else the first ones (one contiguous read).
    """
    n_obs = counts.shape[0]
    if _in_memory(counts):
        idx = np.unique(np.linspace(0, n_obs - 1, min(n_obs, AUTO_CELLS)).round().astype(np.int64))
        chunk = counts[idx]
    else:
        idx = np.arange(min(n_obs, AUTO_CELLS))
        chunk = to_memory(counts[: idx.size])
    medians = []
    for steps in AUTO_STEPS:
        gaps = run(chunk, steps, idx)
        med = float(np.nanmedian(gaps)) if np.isfinite(gaps).any() else 0.0
        medians.append(med)
        if med <= GAP_TOLERANCE:
            return steps, medians
    return AUTO_STEPS[-1], medians


def _check_attribute_args(
    method: str,
    *,
    on_degenerate: str,
    n_steps: int | str,
    target_sum: float,
    batch_size: int | None,
    completeness_key: str | None = None,
) -> None:
    """Raise on options no run can use, before any data is read."""
    if method not in METHODS:
        msg = f"Unknown attribution method {method!r}; use one of {list(METHODS)} (ig: integrated gradients, dl: DeepLIFT, ixg: input x gradient)."
        raise ValueError(msg)
    check_choice("on_degenerate", on_degenerate, OnDegenerate)
    if not (n_steps == "auto" or (not isinstance(n_steps, str) and n_steps >= 1)):
        msg = f"n_steps must be a positive integer or 'auto', got {n_steps!r}."
        raise ValueError(msg)
    if completeness_key is not None and method != "ig":
        msg = f"completeness_key= reports integrated gradients' completeness gap; it needs method='ig', not {method!r}."
        raise ValueError(msg)
    if not (np.isfinite(target_sum) and target_sum > 0):
        msg = f"target_sum must be a positive number (each cell's attributions sum to it), got {target_sum!r}."
        raise ValueError(msg)
    if batch_size is not None and batch_size < 1:
        msg = f"batch_size must be a positive number of cells, got {batch_size!r}; pass None to derive it from memory."
        raise ValueError(msg)


@dataclass
class _Run:
    """One attribution run, set up: the model, the input and how it is read, the engine and batch size."""

    model: FoundationModel
    module: Any
    method: str
    n_steps: int
    target_sum: float
    on_degenerate: str
    engine: str
    batch_size: int
    counts: Any
    where: str
    in_memory: bool
    check_counts: bool
    alignment: Any
    layer: str | None
    gene_symbols: str | None
    key: str
    device: Any = None
    workspace: Any = None
    grouped: Any = None  # CellGroups of a model whose encoder takes per-cell covariates (scvi-tools)
    totals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gaps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    auto_medians: list[float] | None = None  # the median gaps n_steps="auto" measured, when it ran

    @property
    def model_to_var(self) -> np.ndarray:
        """For each model gene, its column in the data (-1 where the data lacks it)."""
        out = np.full(self.model.n_genes, -1, dtype=np.int64)
        var_idx = np.flatnonzero(self.alignment.var_in_model)
        out[self.alignment.var_to_model[var_idx]] = var_idx
        return out


def _set_up(
    data: AnnData,
    model: FoundationModel | str,
    *,
    method: str,
    layer: str | None,
    target: Any,
    n_steps: int | str,
    batch_size: int | None,
    target_sum: float,
    gene_symbols: str | None,
    min_overlap: int | None,
    check_counts: bool,
    engine: str,
    on_degenerate: str,
    key_added: str | None,
) -> _Run:
    """Load the model, align the genes, pick the engine, the steps and the batch size; check the counts in memory."""
    import torch

    from ..attribution import TargetModule
    from ..attribution._engine import CellGroups, pick_engine
    from ..models import FoundationModel, load

    if not isinstance(model, FoundationModel):
        model = load(model)
    target = model.default_target if target is None else target
    module = TargetModule(model.encoder, target)  # validates the target
    counts = get_matrix(data, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    alignment = align_genes(data, model, gene_symbols=gene_symbols, min_overlap=min_overlap)
    in_memory = _in_memory(counts)
    if in_memory:
        if sparse.issparse(counts) and counts.format != "csr":
            counts = sparse.csr_matrix(counts)
        # negative or NaN input is refused even with check_counts=False: the model's log1p makes it NaN
        _check_counts(counts, where=where, require_integer=check_counts and model.preprocessing.requires_counts)
    key = key_added or f"{LAYER_PREFIX}{method}"
    if layer is not None and key == layer:
        msg = f"key_added={key!r} would overwrite the counts layer it reads (layer={layer!r}); choose another name."
        raise ValueError(msg)
    chosen = pick_engine(model, method, module, engine, device=settings.device)
    device = torch.device(settings.device)
    module.to(device)
    workspace = None
    if chosen == "fast":
        from ..attribution._workspace import Workspace

        workspace = Workspace()
    # models whose encoder takes per-cell covariates (scvi-tools) give each group of cells its own encoder
    grouped = CellGroups(model, data.obs, target).to(device) if hasattr(model, "cell_groups") else None
    auto_medians = None
    if n_steps == "auto":
        if method == "ig":
            n_steps, auto_medians = _choose_n_steps(
                counts, alignment, model, module, chosen, method, device, workspace, grouped
            )
        else:
            n_steps = 50  # unused by dl / ixg
    if batch_size is None:
        batch_size = _default_batch_size(model, method, n_steps, chosen)
    return _Run(
        model=model,
        module=module,
        method=method,
        n_steps=n_steps,
        target_sum=target_sum,
        on_degenerate=on_degenerate,
        engine=chosen,
        batch_size=max(1, int(batch_size)),
        counts=counts,
        where=where,
        in_memory=in_memory,
        check_counts=check_counts,
        alignment=alignment,
        layer=layer,
        gene_symbols=gene_symbols,
        key=key,
        device=device,
        workspace=workspace,
        grouped=grouped,
        totals=np.zeros(data.n_obs, dtype=np.float64),
        gaps=np.full(data.n_obs, np.nan),
        auto_medians=auto_medians,
    )


def _choose_n_steps(
    counts: Any,
    alignment: Any,
    model: FoundationModel,
    module: Any,
    engine: str,
    method: str,
    device: Any,
    workspace: Any,
    grouped: Any = None,
) -> tuple[int, list[float]]:
    """``n_steps="auto"``: the first of :data:`AUTO_STEPS` whose median completeness gap is within the tolerance."""
    from ..attribution._engine import compute_batch

    def gaps_at(chunk: Any, steps: int, rows: np.ndarray) -> np.ndarray:
        x, _ = model_input(chunk, alignment, model, validate=False)
        raw, t_in, t_base = (compute_batch if grouped is None else grouped.batch_fn_for(rows))(
            engine,
            module,
            model,
            x,
            method=method,
            n_steps=steps,
            device=device,
            sparse_output=True,
            workspace=workspace,
        )
        return _completeness_gap(raw, t_in, t_base)

    with _threads(settings.n_jobs, numba=engine == "fast"):  # the same threads as the main loop
        n_steps, medians = _auto_n_steps(counts, gaps_at)
    logg.info(f"    n_steps='auto': {n_steps} steps (median gaps {[round(m, 4) for m in medians]})")
    return n_steps, medians


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

    from ..attribution import normalize_rows
    from ..attribution._engine import compute_batch

    device = run.device if run.device is not None else torch.device(settings.device)
    run.module.to(device)
    start, stop = (0, run.totals.size) if rows is None else rows
    if start % run.batch_size:  # pragma: no cover - internal consistency
        msg = f"rows start at {start}, not a multiple of the batch size {run.batch_size}"
        raise ValueError(msg)
    requires_integer = run.check_counts and run.model.preprocessing.requires_counts
    with _threads(settings.n_jobs, numba=run.engine == "fast"):
        for lo in range(start, stop, run.batch_size):
            hi = min(lo + run.batch_size, stop)
            chunk = to_memory(run.counts[lo:hi])
            if not run.in_memory:  # negative or NaN input is refused even with check_counts=False
                _check_counts(chunk, where=f"{run.where} (cells {lo}-{hi - 1})", require_integer=requires_integer)
            x, run.totals[lo:hi] = model_input(chunk, run.alignment, run.model, validate=False)
            del chunk
            batch_fn = compute_batch if run.grouped is None else run.grouped.batch_fn(lo, hi)
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
            )
            del x
            if lo == 0:
                _handle_degenerate(run, raw, t_in, t_base)
            if run.method == "ig":
                run.gaps[lo:hi] = _completeness_gap(raw, t_in, t_base)
            normed = normalize_rows(raw, run.target_sum)
            del raw
            yield normed
            if on_cells is not None:
                on_cells(hi - lo)


def _handle_degenerate(run: _Run, raw: Any, t_in: np.ndarray, t_base: np.ndarray) -> None:
    mass = np.asarray(abs(raw).sum(axis=1), dtype=np.float64).ravel()
    problem = _check_degenerate(mass, np.abs(t_in - t_base), run.method, run.module.target_name)
    if problem is None:
        return
    if run.on_degenerate == "raise":
        raise DegenerateAttributionError(problem)
    warnings.warn(problem, UserWarning, stacklevel=4)


def _provenance(run: _Run) -> dict[str, Any]:
    """The record written to ``adata.uns["scsig"]["layers"][key]`` (and into an atlas's manifest)."""
    from .. import __version__

    record: dict[str, Any] = {
        "method": run.method,
        "target": run.module.target_name,
        "baseline": "zeros",
        "n_steps": int(run.n_steps) if run.method == "ig" else 0,
        "integration": "gausslegendre" if run.method == "ig" else "none",
        "target_sum": float(run.target_sum),
        "input_layer": run.layer if run.layer is not None else "X",
        "gene_symbols": run.gene_symbols if run.gene_symbols is not None else "var_names",
        "engine": run.engine,
        "model": run.model.describe(),
        "gene_order_hash": run.model.gene_order_hash,
        "overlap": run.alignment.report(),
        "scsig_version": __version__,
    }
    if run.method == "ig":
        record["completeness_gap"] = _gap_summary(run.gaps)
        record["n_steps_auto"] = run.auto_medians is not None
        if run.auto_medians is not None:
            record["auto_median_gaps"] = list(run.auto_medians)
    return record


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
    if store is None:
        return _MemorySink(data.n_vars, _nnz_bound(run.counts))
    from ._ondisk import LayerWriter

    return LayerWriter(store, key=run.key, obs=data.obs, var=data.var, n_vars=data.n_vars)


@doc_params(
    doc_adata=doc_adata,
    doc_layer_counts=doc_layer_counts,
    doc_mod=doc_mod,
    doc_copy=doc_copy,
    doc_progress=doc_progress,
)
def attribute(
    adata: Any,
    model: FoundationModel | str,
    *,
    method: Literal["ig", "dl", "ixg"] = "ig",
    layer: str | None = None,
    target: Literal["self_similarity", "embedding_distance"] | Callable | None = None,
    n_steps: int | Literal["auto"] = 50,
    batch_size: int | None = None,
    target_sum: float = 1000.0,
    gene_symbols: str | None = None,
    min_overlap: int | None = None,
    check_counts: bool = True,
    engine: Literal["auto", "captum", "fast"] = "auto",
    on_degenerate: OnDegenerate = "raise",
    key_added: str | None = None,
    completeness_key: str | None = None,
    store: str | Path | None = None,
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
        What is attributed. ``None`` uses the model's ``default_target``: ``"self_similarity"``
        (the published SIGnature target) for every loader except the bundled ``"pbmc-demo"``, whose
        default is ``"embedding_distance"`` (chosen on held-out cells, ``docs/validity.md``).
        ``"embedding_distance"`` is :math:`\lVert f(x') - f(0) \rVert_2`, which ``"dl"`` and ``"ixg"``
        need: under self-similarity their attributions are degenerate (see ``on_degenerate``).
        A callable ``(embedding, reference) -> (n,)`` tensor is used as is.
    n_steps
        Integration points for ``"ig"``. Integrated gradients are complete -- a cell's raw
        attributions sum to :math:`t(x) - t(0)` -- up to the integration error; the relative gap
        :math:`|\sum_g a_g - (t(x) - t(0))| / |t(x) - t(0)|` is computed for every cell and
        summarized in ``uns``, with a warning when its median exceeds 1 % (on the bundled Kang cells
        with the demo model: a median of 1.8 % at 20 steps, 0.8 % at 50, 0.2 % at 200;
        ``benchmarks/everyday.py``).
        ``"auto"`` measures the gap on up to 128 cells at 20, 50, 100, 200, 400, 800 steps and
        uses the first count whose median gap is at most 1 %.
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
    store
        Write the layer to this new ``.h5ad`` file batch by batch instead of holding it in memory
        (for data larger than memory, e.g. ``adata`` opened with ``backed="r"``). The file holds
        ``obs``, ``var``, ``layers[key_added]`` and ``uns["scsig"]``, and is written under a temporary
        name and renamed when complete, so an interrupted run leaves no partial file.
        ``adata.layers[key_added]`` then reads from that file (a backed sparse dataset).
    completeness_key
        With ``"ig"``, also write each cell's completeness gap to ``adata.obs[completeness_key]``.
    {doc_progress}
    {doc_mod}
    {doc_copy}

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    ``adata.layers[key_added]``
        CSR float32 attributions over ``adata.var`` (genes outside the model are 0); with ``store=``,
        a backed sparse dataset reading from that file.
    ``adata.var[f"{{key_added}}_in_model"]``
        Whether the model knows each gene.
    ``adata.uns["scsig"]["layers"][key_added]``
        Provenance: model (name, checksum, gene-order hash), method, target, baseline, ``n_steps``,
        ``target_sum``, the input layer, the gene overlap and the package version; for ``"ig"``
        also ``completeness_gap`` (median, 90th percentile, maximum, number of cells above 1 %).
    ``adata.obs[completeness_key]``
        Only when ``completeness_key`` is given: the per-cell gap.

    Notes
    -----
    The cells are read, normalized and attributed one batch at a time, so ``adata`` may be opened
    with ``anndata.read_h5ad(path, backed="r")`` or hold a dask array in ``X`` / ``layer``: only
    one batch of counts is in memory at once, and for such input the counts checks (and the
    zero-count warning) run batch by batch. The result is held in memory as a CSR layer with at
    most as many entries as the input (attributions are zero where a cell has no counts); with a
    backed AnnData it is not written to the file: call ``adata.write_h5ad(...)`` or
    :func:`anndata.io.write_elem` to store it, or pass ``store=`` to stream it to disk so that memory
    does not grow with the number of cells. To attribute many datasets straight into an atlas
    (optionally on a dask cluster), see :meth:`scsig.Atlas.attribute`.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, progress=False)
    >>> adata.layers["attr_ig"].sum(axis=1)[:2].round().tolist()
    [[1000.0], [1000.0]]
    """
    _check_attribute_args(
        method,
        on_degenerate=on_degenerate,
        n_steps=n_steps,
        target_sum=target_sum,
        batch_size=batch_size,
        completeness_key=completeness_key,
    )
    _, data = resolve_adata(adata, mod=mod, read_only=True)  # the user's object is written only on success
    run = _set_up(
        data,
        model,
        method=method,
        layer=layer,
        target=target,
        n_steps=n_steps,
        batch_size=batch_size,
        target_sum=target_sum,
        gene_symbols=gene_symbols,
        min_overlap=min_overlap,
        check_counts=check_counts,
        engine=engine,
        on_degenerate=on_degenerate,
        key_added=key_added,
    )
    show = settings.progress if progress is None else progress
    start = logg.info(
        f"computing {method} attributions of {data.n_obs} cells with {run.model.name} ({run.engine} engine, "
        f"batches of {run.batch_size}){f', writing them to {store}' if store is not None else ''}"
    )
    from .._utils._progress import tqdm

    model_to_var = run.model_to_var
    sink = _open_sink(data, run, store)
    try:
        with tqdm(total=data.n_obs, disable=not show, desc=f"attribute ({method})", unit="cells") as bar:
            for normed in _batches(run, on_cells=bar.update):
                sink.append(_to_var_csr(normed, model_to_var, data.n_vars))
        warn_empty_cells(run.totals, data.obs_names, what="in the model's genes")
        record = _provenance(run)
        if "completeness_gap" in record:
            _warn_gap(record["completeness_gap"], run.n_steps)
        in_model = run.alignment.var_in_model
        layer_out = sink.finish(record=record, in_model=in_model)
    except BaseException:
        sink.abort()
        raise
    container, data = resolve_adata(adata, mod=mod, copy=copy)
    data.layers[run.key] = layer_out
    if completeness_key is not None:
        data.obs[completeness_key] = run.gaps
    data.var[f"{run.key}{IN_MODEL_SUFFIX}"] = in_model
    data.uns.setdefault(UNS_KEY, {}).setdefault("layers", {})[run.key] = record
    logg.info(
        f"    finished: added layers[{run.key!r}], var[{run.key + IN_MODEL_SUFFIX!r}], "
        f"uns['scsig']['layers'][{run.key!r}]",
        time=start,
    )
    return wrap_return(container, copy=copy)
