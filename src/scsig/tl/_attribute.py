"""``sg.tl.attribute``: per-cell, per-gene attributions of a foundation model's embedding.

The steps live in private modules: the run's set-up (``_attribute_run``), the batch loop and where its
blocks go (``_attribute_batches``) and the checks of the result (``_completeness``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

from .. import _logging as logg
from .._constants import IN_MODEL_SUFFIX, METHODS, UNS_KEY
from .._docs import doc_adata, doc_copy, doc_layer_counts, doc_mod, doc_params, doc_progress
from .._settings import settings
from .._utils import check_choice, check_number, resolve_adata, wrap_return
from .._utils._warn import user_stacklevel
from .._version import __version__
from ..pp._validate import warn_empty_cells
from ._attribute_batches import _batches, _open_sink, _to_var_csr
from ._attribute_run import _layer_key, _set_up
from ._completeness import DegenerateAttributionError, _gap_summary, _warn_gap, warn_no_signal

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np
    from anndata import AnnData

    from ..models import FoundationModel
    from ._attribute_run import _Run

__all__ = ["DegenerateAttributionError", "attribute"]

OnDegenerate = Literal["raise", "warn"]


MAX_STEPS = 5000
"""Most integration steps accepted: the Gauss-Legendre nodes of n steps take n x n memory (5,000: 200 MB), and
integrated gradients converges long before (``n_steps="auto"`` picks enough)."""


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
    if not (isinstance(n_steps, str) and n_steps == "auto"):
        if isinstance(n_steps, str) or n_steps is None:
            msg = f"n_steps must be a positive integer or 'auto', got {n_steps!r}."
            raise (ValueError if isinstance(n_steps, str) else TypeError)(msg)
        check_number("n_steps", n_steps, integer=True, minimum=1, maximum=MAX_STEPS)
    if completeness_key is not None and method != "ig":
        msg = f"completeness_key= reports integrated gradients' completeness gap; it needs method='ig', not {method!r}."
        raise ValueError(msg)
    check_number("target_sum", target_sum, minimum=0, exclusive_minimum=True)
    if batch_size is not None:
        check_number("batch_size", batch_size, integer=True, minimum=1)


def _provenance(run: _Run) -> dict[str, Any]:
    """The record written to ``adata.uns["scsig"]["layers"][key]`` (and into an atlas's manifest)."""
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
    if run.no_signal.size:
        record["n_cells_without_attribution"] = int((run.no_signal & (run.totals > 0)).sum())
    if run.dropped is not None:
        record["genes_dropped"] = dropped_summary(run.dropped, run.key, getattr(run.model.encoder, "crop", None))
    if run.method == "ig":
        record["completeness_gap"] = _gap_summary(run.gaps)
        record["n_steps_auto"] = run.auto_gaps is not None
        if run.auto_gaps is not None:
            record["auto_median_gaps"] = list(run.auto_gaps["median"])
            record["auto_fraction_above_1pct"] = list(run.auto_gaps["fraction_above_1pct"])
    return record


def dropped_summary(dropped: np.ndarray, key: str, crop: str | None) -> dict[str, Any]:
    """The provenance of a token model's genes dropped per cell (``genes_dropped``): counts, ``obs`` column, what was kept."""
    return {
        "n_cells": int((dropped > 0).sum()),
        "total": int(dropped.sum()),
        "max": int(dropped.max(initial=0)),
        "obs_key": dropped_key(key),
        "kept": "first" if crop == "first" else "most_expressed",
    }


def kept_genes(dropped: dict) -> str:
    """Which genes a cell longer than a token model kept, in words, from its ``genes_dropped`` record."""
    return "first genes in the model's gene order" if dropped.get("kept") == "first" else "most expressed genes"


def dropped_key(key: str) -> str:
    """The ``obs`` column of a layer's genes dropped per cell (token models)."""
    return f"{key}_n_genes_dropped"


def _ours(data: AnnData) -> tuple[dict, set[str]]:
    """The layers ``sg.tl.attribute`` recorded writing, and the ``obs`` columns it wrote gaps into."""
    layers = data.uns.get(UNS_KEY, {}).get("layers", {}) if isinstance(data.uns.get(UNS_KEY), dict) else {}
    gaps = {
        str(r.get("completeness_key")) for r in layers.values() if isinstance(r, dict) and r.get("completeness_key")
    }
    return layers, gaps


def _check_outputs(data: AnnData, *, layer: str | None, key: str, completeness_key: str | None) -> None:
    """Refuse to replace the input layer, a layer or an ``obs`` column that sg.tl.attribute did not write."""
    if layer is not None and key == layer:
        return  # refused in the run's set-up, which names the counts layer
    layers, gaps = _ours(data)
    if key in data.layers and key not in layers:
        msg = (
            f"adata.layers[{key!r}] exists and was not written by sg.tl.attribute (no record in "
            f"adata.uns['scsig']['layers']); it is not replaced. Pass another key_added, or remove it first "
            f"(del adata.layers[{key!r}])."
        )
        raise ValueError(msg)
    if completeness_key is not None and completeness_key in data.obs.columns and completeness_key not in gaps:
        msg = (
            f"adata.obs[{completeness_key!r}] exists and was not written by sg.tl.attribute; it is not replaced. "
            "Pass another completeness_key."
        )
        raise ValueError(msg)


def _warn_view(data: AnnData) -> None:
    """Say, as scanpy does, that attributing a view writes into a copy, not into the AnnData it views."""
    if getattr(data, "is_view", False):
        warnings.warn(
            "adata is a view (e.g. adata[mask]): the attributions are written into this object, which becomes a "
            "copy of its cells; the AnnData it views is not changed, and a view made inline (sg.tl.attribute("
            "adata[mask], model)) is lost. Keep the subset first: sub = adata[mask].copy(); sg.tl.attribute(sub, model).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _warn_dropped(dropped: dict | None, n_obs: int) -> None:
    """Once per run: how many cells had more expressed genes than a token model takes, and which genes they kept."""
    if not dropped or not dropped["n_cells"]:
        return
    warnings.warn(
        f"{dropped['n_cells']} of {n_obs} cells express more of the model's genes than it takes; their {kept_genes(dropped)} "
        f"were kept and up to {dropped['max']} per cell dropped (attribution 0). "
        f"adata.obs[{dropped['obs_key']!r}] has the count per cell.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def _fill(sink: Any, data: AnnData, run: _Run, *, progress: bool | None) -> None:
    """Attribute all cells batch by batch into ``sink``, each block re-indexed onto ``data.var``, with a progress bar."""
    from .._utils._progress import tqdm

    show = settings.progress if progress is None else progress
    model_to_var = run.model_to_var
    with tqdm(total=data.n_obs, disable=not show, desc=f"attribute ({run.method})", unit="cells") as bar:
        for normed in _batches(run, on_cells=bar.update):
            sink.append(_to_var_csr(normed, model_to_var, data.n_vars))


def _write_results(data: AnnData, run: _Run, layer: Any, record: dict, completeness_key: str | None) -> None:
    """The layer, the in-model flags, the per-cell gaps (when asked) and the provenance record, into ``data``."""
    data.layers[run.key] = layer
    if completeness_key is not None:
        data.obs[completeness_key] = run.gaps
        record = {**record, "completeness_key": completeness_key}
    if run.dropped is not None:
        data.obs[dropped_key(run.key)] = run.dropped
    data.var[f"{run.key}{IN_MODEL_SUFFIX}"] = run.alignment.var_in_model
    data.uns.setdefault(UNS_KEY, {}).setdefault("layers", {})[run.key] = record


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
    engine: Literal["auto", "captum", "fast", "tokens"] = "auto",
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
        summarized in ``uns``, with a warning when more than 10 % of the cells have a gap above 1 %
        (on the bundled Kang cells with the demo model: a median of 1.8 % at 20 steps, 0.8 % at 50,
        0.2 % at 200; ``benchmarks/everyday.py``).
        ``"auto"`` measures the gap on up to 128 cells at 20, 50, 100, 200, 400, 800 steps and
        uses the first count at which at most 5 % of them are above 1 %: half the warning's
        fraction, so that the whole data, not only the sample, stays clear of the warning.
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
        ``"auto"`` takes the token engine for token-transformer models (scGPT, scFoundation, BMFM-RNA: the
        only engine they run on, see :doc:`/token_models`; cells with more expressed genes than the
        model takes keep their most expressed (scFoundation with ``crop="first_512"``: their first 512 in
        the gene list's order), and ``adata.obs[f"{{key}}_n_genes_dropped"]`` counts the rest), the
        exact fast path for SCimilarity-architecture and scvi-tools encoders on the CPU (integrated gradients with any target; input x gradient and DeepLIFT with a target other
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
        Layer to write; default ``f"attr_{{method}}"``. A layer of that name that ``sg.tl.attribute``
        did not write (no record in ``adata.uns["scsig"]["layers"]``) is never replaced: the call
        refuses it and names the fix.
    store
        Write the layer to this new ``.h5ad`` file batch by batch instead of holding it in memory
        (for data larger than memory, e.g. ``adata`` opened with ``backed="r"``). The file holds
        ``obs`` (with the genes dropped per cell of a token model), ``var``, ``layers[key_added]`` and
        ``uns["scsig"]``, and is written under a temporary
        name and renamed when complete, so an interrupted run leaves no partial file.
        ``adata.layers[key_added]`` then reads from that file (a backed sparse dataset).
    completeness_key
        With ``"ig"``, also write each cell's completeness gap to ``adata.obs[completeness_key]`` (an
        existing column that ``sg.tl.attribute`` did not write is refused, not replaced).
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
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
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
    _check_outputs(data, layer=layer, key=_layer_key(method, layer, key_added), completeness_key=completeness_key)
    if not copy:
        _warn_view(data)
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
    start = logg.info(
        f"computing {method} attributions of {data.n_obs} cells with {run.model.name} ({run.engine} engine, "
        f"batches of {run.batch_size}){f', writing them to {store}' if store is not None else ''}"
    )
    sink = _open_sink(data, run, store)
    try:
        _fill(sink, data, run, progress=progress)
        warn_empty_cells(run.totals, data.obs_names, what="in the model's genes")
        warn_no_signal(run.no_signal, run.totals > 0, data.obs_names)
        record = _provenance(run)
        if "completeness_gap" in record:
            _warn_gap(record["completeness_gap"], run.n_steps, auto=run.auto_gaps is not None)
        _warn_dropped(record.get("genes_dropped"), data.n_obs)
        extra_obs = {dropped_key(run.key): run.dropped} if run.dropped is not None else {}
        layer_out = sink.finish(record=record, in_model=run.alignment.var_in_model, obs_columns=extra_obs)
    except BaseException:
        sink.abort()
        raise
    container, data = resolve_adata(adata, mod=mod, copy=copy)
    _write_results(data, run, layer_out, record, completeness_key)
    logg.info(
        f"    finished: added layers[{run.key!r}], var[{run.key + IN_MODEL_SUFFIX!r}], "
        f"uns['scsig']['layers'][{run.key!r}]",
        time=start,
    )
    return wrap_return(container, copy=copy)
