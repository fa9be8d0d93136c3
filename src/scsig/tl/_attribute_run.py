"""The set-up of an attribution run: the model and its target, the input, the engine, the steps and the batch size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .. import _logging as logg
from .._constants import LAYER_PREFIX
from .._settings import settings
from .._utils import get_matrix, to_memory
from .._utils import threads as _threads
from ..pp._align import align_genes
from ..pp._prepare import model_input
from ..pp._validate import check_counts as _check_counts
from ._completeness import WARN_FRACTION, _completeness_gap, fraction_above

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData

    from ..models import FoundationModel

__all__ = ["AUTO_CELLS", "AUTO_STEPS"]

AUTO_STEPS = (20, 50, 100, 200, 400, 800)
"""Step counts ``n_steps="auto"`` tries, in order."""

AUTO_CELLS = 128
"""Cells ``n_steps="auto"`` measures the gap on."""


def _in_memory(x: Any) -> bool:
    """Whether ``x`` is a numpy array or a scipy sparse matrix (not a backed or dask array read batch by batch)."""
    return isinstance(x, np.ndarray) or sparse.issparse(x)


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
    dropped: np.ndarray | None = None  # token models: expressed genes per cell beyond the model's length
    no_signal: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # cells with no attribution at all
    cells: Any = None  # the cells' names, for messages
    auto_gaps: dict[str, list[float]] | None = None  # what n_steps="auto" measured per step count, when it ran

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
    from ..attribution._engine import CellGroups

    model, target, module = _model_and_target(model, target)
    counts = get_matrix(data, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    alignment = align_genes(data, model, gene_symbols=gene_symbols, min_overlap=min_overlap)
    in_memory = _in_memory(counts)
    if in_memory:
        if sparse.issparse(counts) and counts.format != "csr":
            counts = sparse.csr_matrix(counts)
        # negative or NaN input is refused even with check_counts=False: the model's log1p makes it NaN
        _check_counts(counts, where=where, require_integer=check_counts and model.preprocessing.requires_counts)
    key = _layer_key(method, layer, key_added)
    chosen, device, workspace = _engine_on_device(model, method, module, engine)
    # models whose encoder takes per-cell covariates (scvi-tools) give each group of cells its own encoder
    grouped = CellGroups(model, data.obs, target).to(device) if hasattr(model, "cell_groups") else None
    auto_gaps = None
    if n_steps == "auto":
        if method == "ig":
            n_steps, auto_gaps = _choose_n_steps(
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
        no_signal=np.zeros(data.n_obs, dtype=bool),
        cells=data.obs_names,
        dropped=np.zeros(data.n_obs, dtype=np.int64) if chosen == "tokens" else None,
        auto_gaps=auto_gaps,
    )


def _model_and_target(model: FoundationModel | str, target: Any) -> tuple[FoundationModel, Any, Any]:
    """The model (loaded by name or path), the target (``None``: the model's default) and its target module."""
    from ..attribution import TargetModule
    from ..models import FoundationModel, load

    if not isinstance(model, FoundationModel):
        model = load(model)
    target = model.default_target if target is None else target
    return model, target, TargetModule(model.encoder, target)  # validates the target


def _layer_key(method: str, layer: str | None, key_added: str | None) -> str:
    """The layer to write: ``key_added`` or ``attr_<method>``, never the counts layer it reads."""
    key = key_added or f"{LAYER_PREFIX}{method}"
    if layer is not None and key == layer:
        msg = f"key_added={key!r} would overwrite the counts layer it reads (layer={layer!r}); choose another name."
        raise ValueError(msg)
    return key


def _engine_on_device(model: FoundationModel, method: str, module: Any, engine: str) -> tuple[str, Any, Any]:
    """The engine that runs (``"fast"`` or ``"captum"``), the device with the target module on it, the fast path's buffers."""
    import torch

    from ..attribution._engine import pick_engine

    chosen = pick_engine(model, method, module, engine, device=settings.device)
    device = torch.device(settings.device)
    module.to(device)
    workspace = None
    if chosen == "fast":
        from ..attribution._workspace import Workspace

        workspace = Workspace()
    return chosen, device, workspace


def _auto_n_steps(counts: Any, run: Callable[[Any, int, np.ndarray], np.ndarray]) -> tuple[int, dict[str, list[float]]]:
    """The smallest of :data:`AUTO_STEPS` that leaves at most half of :data:`WARN_FRACTION` of up to :data:`AUTO_CELLS` cells unconverged.

    Returns the steps and, per step count tried, the median gap and the fraction of cells above the tolerance.

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
    medians, fractions = [], []
    for steps in AUTO_STEPS:
        gaps = run(chunk, steps, idx)
        medians.append(float(np.nanmedian(gaps)) if np.isfinite(gaps).any() else 0.0)
        fractions.append(fraction_above(gaps))
        if fractions[-1] <= WARN_FRACTION / 2:  # a margin: the sample's fraction is an estimate
            break
    return steps, {"median": medians, "fraction_above_1pct": fractions}


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
) -> tuple[int, dict[str, list[float]]]:
    """``n_steps="auto"``: the first of :data:`AUTO_STEPS` that leaves at most half of :data:`WARN_FRACTION` of the sampled cells unconverged."""
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
            stats={},  # genes a long cell drops are reported once by the main run, not here
        )
        return _completeness_gap(raw, t_in, t_base)

    with _threads(settings.n_jobs, numba=engine == "fast"):  # the same threads as the main loop
        n_steps, tried = _auto_n_steps(counts, gaps_at)
    shown = [f"{100 * f:.0f} %" for f in tried["fraction_above_1pct"]]
    logg.info(f"    n_steps='auto': {n_steps} steps (cells above a 1 % gap per step count tried: {shown})")
    return n_steps, tried
