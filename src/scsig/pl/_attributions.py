"""``sg.pl.gene_attributions``: which signature genes carry the attribution in which groups."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import IN_MODEL_SUFFIX
from .._docs import doc_mod, doc_params, doc_plot_common
from .._uns import score_columns, score_record
from .._utils import check_choice, resolve_adata
from .._utils._warn import user_stacklevel
from ..pp._validate import check_unique_var_names
from ..tl._score import attribution_layer
from ._utils import check_kind, finish, group_labels, new_axes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["gene_attributions", "group_attribution_stats"]

_KINDS = ("heatmap", "dotplot")
StandardScale = Literal["var", "group"]


def _score_record(adata: AnnData, key: str) -> dict:
    """The ``uns`` record of the score ``key`` (a ``key_added`` of :func:`scsig.tl.score` or one of its columns), or a KeyError."""
    record = score_record(adata, key)
    if record is None:
        known = score_columns(adata)
        msg = (
            f"{key!r} is neither a list of genes nor a score recorded in adata.uns['scsig']['scores'] "
            f"(pass a list of genes, or a score column of sg.tl.score{f', e.g. {known[:10]}' if known else ''})."
        )
        raise KeyError(msg)
    return record


def _resolve_genes(adata: AnnData, genes: str | Sequence[str], layer: str) -> list[str]:
    """Gene list from a list, or from the genes a recorded score used (``genes`` = its ``key_added``)."""
    if isinstance(genes, str):
        record = _score_record(adata, genes)
        seen: dict[str, None] = {}
        for sig in record["signatures"].values():
            seen.update(dict.fromkeys(sig["genes"]))
        gene_list = list(seen)
    else:
        gene_list = [str(g) for g in genes]
    if not gene_list:
        msg = "genes is empty."
        raise ValueError(msg)
    index = pd.Index(gene_list)
    if not index.is_unique:
        msg = f"genes lists some genes more than once: {index[index.duplicated()].unique().tolist()[:5]}."
        raise ValueError(msg)
    absent = [g for g in gene_list if g not in adata.var_names]
    if len(absent) == len(gene_list):
        msg = f"None of the genes is in adata.var_names (e.g. {gene_list[:5]})."
        raise KeyError(msg)
    col = f"{layer}{IN_MODEL_SUFFIX}"
    unknown = [g for g in gene_list if g not in absent and col in adata.var and not bool(adata.var.at[g, col])]
    dropped = absent + unknown
    if dropped:
        warnings.warn(
            f"{len(dropped)} of {len(gene_list)} genes are not in adata.var or unknown to the layer's model and are "
            f"left out: {dropped[:10]}{' ...' if len(dropped) > 10 else ''}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return [g for g in gene_list if g not in set(dropped)]


def _gene_groups(adata: AnnData, genes: Any) -> dict[str, list[str]]:
    """``{label: genes}``: one unlabelled group for a list, the dict's groups, or a score's signatures."""
    if isinstance(genes, Mapping):
        if not genes:
            msg = "genes is an empty dict; give label -> list of genes."
            raise ValueError(msg)
        out = {}
        for label, gl in genes.items():
            out[str(label)] = [gl] if isinstance(gl, str) else [str(g) for g in gl]
        return out
    if isinstance(genes, str):
        record = _score_record(adata, genes)
        return {
            str(sig.get("name", name)): [str(g) for g in sig["genes"]] for name, sig in record["signatures"].items()
        }
    return {"": [str(g) for g in genes]}


def _label_gene_groups(a: Axes, groups: dict[str, list[str]], shown: list[str], *, swap_axes: bool) -> None:
    """A bracket and label over each group of genes (above the columns; left of the rows when swapped)."""
    from matplotlib.transforms import blended_transform_factory

    pos = {g: i for i, g in enumerate(shown)}
    seen: set[str] = set()
    for label, gl in groups.items():
        idx = [pos[g] for g in gl if g in pos and g not in seen]
        seen.update(gl)
        if not idx:
            continue
        lo, hi = min(idx) - 0.4, max(idx) + 0.4
        if swap_axes:
            tr = blended_transform_factory(a.transAxes, a.transData)
            a.plot([-0.02, -0.02], [lo, hi], color="0.2", lw=0.8, transform=tr, clip_on=False)
            a.text(-0.03, (lo + hi) / 2, label, transform=tr, ha="right", va="center", fontsize="small")
        else:
            tr = blended_transform_factory(a.transData, a.transAxes)
            a.plot([lo, hi], [1.02, 1.02], color="0.2", lw=0.8, transform=tr, clip_on=False)
            a.text((lo + hi) / 2, 1.03, label, transform=tr, ha="center", va="bottom", fontsize="small")


def group_attribution_stats(
    adata: AnnData, genes: Sequence[str], groups: pd.Series, layer: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per group (rows) and gene (columns): mean attribution over all cells, and fraction of cells with a nonzero one."""
    cols = adata.var_names.get_indexer(genes)
    x = adata.layers[layer]
    sub = sparse.csc_matrix(x)[:, cols] if sparse.issparse(x) else np.asarray(x[:, cols])
    codes = groups.cat.codes.to_numpy()
    keep = codes >= 0
    n_groups = len(groups.cat.categories)
    indicator = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (codes[keep], np.flatnonzero(keep))), shape=(n_groups, adata.n_obs)
    )
    sums = indicator @ sub
    nonzero = indicator @ (sub != 0).astype(np.float64)
    counts = np.asarray(indicator.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.asarray(sums.todense() if sparse.issparse(sums) else sums, dtype=np.float64) / counts[:, None]
        frac = (
            np.asarray(nonzero.todense() if sparse.issparse(nonzero) else nonzero, dtype=np.float64) / counts[:, None]
        )
    index = pd.Index([str(c) for c in groups.cat.categories], name=groups.name)
    columns = pd.Index(list(genes), name="gene")
    return pd.DataFrame(mean, index=index, columns=columns), pd.DataFrame(frac, index=index, columns=columns)


def _scale(values: pd.DataFrame, standard_scale: str | None) -> pd.DataFrame:
    if standard_scale is None:
        return values
    axis = 0 if standard_scale == "var" else 1
    low = values.min(axis=axis)
    span = values.max(axis=axis) - low
    span = span.where(span > 0, 1.0)
    return values.sub(low, axis=1 - axis).div(span, axis=1 - axis)


@doc_params(doc_mod=doc_mod, doc_plot_common=doc_plot_common)
def gene_attributions(
    adata: Any,
    genes: str | Sequence[str],
    *,
    groupby: str | Sequence[str],
    layer: str | None = None,
    kind: Literal["heatmap", "dotplot"] = "heatmap",
    standard_scale: StandardScale | None = None,
    cmap: str = "Reds",
    vmin: float | None = None,
    vmax: float | None = None,
    largest_dot: float = 200.0,
    swap_axes: bool = False,
    figsize: tuple[float, float] | None = None,
    mod: str = "rna",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | Path | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Show which signature genes drive the score in which groups of cells.

    For every group of ``groupby`` and every gene, the colour is the mean normalized attribution
    of the gene over all cells of the group (in the layer's units: with ``target_sum=1000`` a
    value of 5 means the gene carries 0.5% of a cell's attribution on average). The dot plot
    also shows, as the dot's area, the fraction of the group's cells in which the gene's
    attribution is nonzero (for integrated gradients with a zero baseline, the cells that
    express it). Groups are rows and genes columns, as in :func:`scanpy.pl.dotplot`.

    Parameters
    ----------
    adata
        Annotated data matrix with an attribution layer from :func:`scsig.tl.attribute`.
    genes
        Genes to show; a dict label -> genes to show labelled groups of genes (as
        :func:`scanpy.pl.dotplot`'s ``var_names``), e.g. one group per signature; or the
        ``key_added`` of a :func:`scsig.tl.score` call to show the genes that score used (grouped by
        signature when it scored several), or one of its score columns (``"score_B"``) for that
        signature's genes. Genes missing from ``adata.var`` or unknown to the model
        are left out with a warning.
    groupby
        Column(s) of ``adata.obs`` with the groups; several columns are combined (e.g. cell type
        and condition).
    layer
        Attribution layer; ``None`` takes the only one recorded by :func:`scsig.tl.attribute`.
    kind
        ``"heatmap"`` or ``"dotplot"``.
    standard_scale
        Rescale the colour to 0-1 per gene (``"var"``) or per group (``"group"``); ``None`` keeps
        attribution units.
    cmap
        Colormap.
    vmin, vmax
        Colour limits.
    largest_dot
        Area of a dot for a fraction of 1, in points squared.
    swap_axes
        Genes as rows and groups as columns.
    figsize
        Size of the figure, in inches.
    {doc_mod}
    {doc_plot_common}

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` when ``show=False`` or ``ax`` is given, the
    :class:`~matplotlib.figure.Figure` when ``return_fig=True``, else ``None``.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> sg.tl.score(adata, ["g0", "g1", "g2"])
    >>> ax = sg.pl.gene_attributions(adata, "score", groupby="group", kind="dotplot", show=False)
    """
    data, key = _check_gene_attributions_args(adata, kind=kind, standard_scale=standard_scale, layer=layer, mod=mod)
    gene_groups = _gene_groups(data, genes)
    flat = [g for gl in gene_groups.values() for g in gl]
    if isinstance(genes, Mapping | str):  # a gene may be in several groups: show it once
        flat = list(dict.fromkeys(flat))
    gene_list = _resolve_genes(data, flat, key)
    mean, frac = group_attribution_stats(data, gene_list, group_labels(data, groupby), key)
    color = _scale(mean, standard_scale)
    if swap_axes:
        color, frac = color.T, frac.T
    if figsize is None:
        figsize = (0.32 * color.shape[1] + 2.8, 0.3 * color.shape[0] + 1.3)
    fig, a = new_axes(ax, figsize)
    if kind == "heatmap":
        mappable = a.imshow(color.to_numpy(), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    else:
        mappable = _draw_dots(a, color, frac, cmap=cmap, vmin=vmin, vmax=vmax, largest_dot=largest_dot)
    _label_cells(a, color)
    if kind == "dotplot":
        cbar = _colorbar_beside_legend(fig, a, mappable)
    else:
        cbar = fig.colorbar(mappable, ax=a, shrink=0.8, aspect=15, pad=0.03)
    cbar.set_label("mean attribution" if standard_scale is None else f"mean attribution\n(scaled per {standard_scale})")
    cbar.outline.set_linewidth(0.4)
    if len(gene_groups) > 1 or isinstance(genes, Mapping):
        _label_gene_groups(a, gene_groups, gene_list, swap_axes=swap_axes)
    return finish(
        fig, a, ax_given=ax is not None, show=show, save=save, return_fig=return_fig, name="gene_attributions"
    )


def _check_gene_attributions_args(
    adata: Any, *, kind: str, standard_scale: str | None, layer: str | None, mod: str
) -> tuple[AnnData, str]:
    """The AnnData to plot and its attribution layer, or an error naming the bad argument."""
    check_kind(kind, _KINDS)
    check_choice("standard_scale", standard_scale, StandardScale | None)
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    key = attribution_layer(data, layer)
    check_unique_var_names(data.var_names)
    return data, key


def _draw_dots(
    a: Axes,
    color: pd.DataFrame,
    frac: pd.DataFrame,
    *,
    cmap: str,
    vmin: float | None,
    vmax: float | None,
    largest_dot: float,
) -> Any:
    """One dot per cell of the table (colour: ``color``, area: ``frac``) and a legend of dot sizes right of ``a``."""
    n_rows, n_cols = color.shape
    yy, xx = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    areas = np.nan_to_num(frac.to_numpy()) ** 1.5 * largest_dot
    mappable = a.scatter(
        xx.ravel(),
        yy.ravel(),
        s=areas.ravel(),
        c=color.to_numpy().ravel(),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        edgecolors="0.4",
        linewidths=0.4,
    )
    a.set_xlim(-0.6, n_cols - 0.4)
    a.set_ylim(n_rows - 0.4, -0.6)
    fmax = float(np.nanmax(frac.to_numpy())) if frac.size else 1.0
    _size_legend(a, [f for f in (0.25, 0.5, 0.75, 1.0) if f <= max(fmax, 0.25) + 1e-9], largest_dot)
    return mappable


def _size_legend(a: Axes, steps: list[float], largest_dot: float) -> None:
    """The legend of dot areas for the fractions ``steps``, in percent, right of ``a``."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            markersize=np.sqrt(f**1.5 * largest_dot),
            markerfacecolor="0.6",
            markeredgecolor="0.4",
            markeredgewidth=0.4,
        )
        for f in steps
    ]
    a.legend(
        handles,
        [f"{round(100 * f)}" for f in steps],
        title="% cells\nnonzero",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        frameon=False,
        labelspacing=0.8,
        borderaxespad=0.0,
        handletextpad=0.6,
    )


def _label_cells(a: Axes, color: pd.DataFrame) -> None:
    """The table's columns and rows as tick labels, without grid or axis titles."""
    n_rows, n_cols = color.shape
    a.set_xticks(np.arange(n_cols), [str(c) for c in color.columns], rotation=90)
    a.set_yticks(np.arange(n_rows), [str(r) for r in color.index])
    a.tick_params(length=2)
    a.grid(visible=False)
    a.set_xlabel("")
    a.set_ylabel("")


def _colorbar_beside_legend(fig: Figure, a: Axes, mappable: Any) -> Any:
    """A fixed-size colorbar right of the size legend of ``a``, so the dots' axes keep their size."""
    from matplotlib.transforms import ScaledTranslation
    from mpl_toolkits.axes_grid1.inset_locator import inset_axes

    # the legend's width in inches depends only on fonts and markers, so measure it once
    renderer = fig.canvas.get_renderer()
    legend = a.get_legend()
    gap = (legend.get_window_extent(renderer).x1 - a.get_window_extent(renderer).x1) / fig.dpi + 0.2
    cax = inset_axes(
        a,
        width=0.1,
        height=1.2,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        bbox_transform=a.transAxes + ScaledTranslation(gap, 0.0, fig.dpi_scale_trans),
        borderpad=0,
    )
    return fig.colorbar(mappable, cax=cax)
