"""``sg.pl.hit_fractions``: per-sample (or per-group) fractions of hit cells across conditions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import UNS_KEY
from .._docs import doc_params, doc_plot_common
from .._uns import get_record
from .._utils import resolve_adata
from ._utils import (
    auto_rotation,
    check_plot_kwargs,
    finish,
    hit_rule,
    new_axes,
    quiet_boxplot,
    resolve_palette,
    style_x_axis,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["hit_fractions"]


def _categories(frame: pd.DataFrame, col: str, order: Sequence[str] | None) -> list[str]:
    values = frame[col]
    if order is not None:
        present = {str(v) for v in values.unique()}
        unknown = [o for o in order if str(o) not in present]
        if unknown:
            msg = f"Order for {col!r} names values that are not in the data: {unknown[:5]}."
            raise ValueError(msg)
        return [str(o) for o in order]
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories if (values == c).any()]
    return sorted({str(v) for v in values.unique()})


def _hit_label(data: Any, hits_key: str | None, *, percent: bool, mod: str) -> str:
    """The y label: hit cells (%) or hit fraction, and how the hits were called when that is recorded."""
    base = "hit cells (%)" if percent else "hit fraction"
    if isinstance(data, pd.DataFrame):
        record = data.attrs.get(UNS_KEY)
    else:
        record = get_record(resolve_adata(data, mod=mod, read_only=True)[1], "hits", hits_key) if hits_key else None
    rule = hit_rule(record)
    return f"{base}\n{rule}" if rule else base


@doc_params(doc_plot_common=doc_plot_common)
def hit_fractions(
    data: Any,
    hits_key: str | None = None,
    *,
    x: str,
    hue: str | None = None,
    sample_key: str | None = None,
    y: str = "fraction",
    order: Sequence[str] | None = None,
    hue_order: Sequence[str] | None = None,
    palette: Sequence[str] | dict[str, str] | None = None,
    points: bool = True,
    size: float = 4.0,
    percent: bool = True,
    rotation: float | None = None,
    ylabel: str | None = None,
    figsize: tuple[float, float] | None = None,
    mod: str = "rna",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | Path | None = None,
    return_fig: bool = False,
    **kwargs: Any,
) -> Axes | Figure | None:
    """Compare the fraction of hit cells across conditions, one dot per sample (or group).

    Each dot is one unit -- a sample with ``sample_key``, otherwise a group of cells -- and its
    height is the fraction of that unit's cells called hits by :func:`scsig.tl.hits`. Boxes
    summarize the units of each condition on the x axis (``x``), optionally split by ``hue``
    (e.g. the cell type); when every box would hold a single unit (groups without samples), only
    the dots are drawn. This is the figure for comparing conditions or diseases: with samples, the
    spread of the dots is the between-sample variation the comparison has to beat.

    Parameters
    ----------
    data
        The tidy DataFrame of :func:`scsig.get.hit_fractions` (any DataFrame with columns ``x``,
        ``y`` and optionally ``hue``), or an AnnData with a hit column ``hits_key``, from which the
        fractions are computed with :func:`scsig.get.hit_fractions` over ``x``, ``hue`` and
        ``sample_key``.
    hits_key
        Boolean column of ``adata.obs`` written by :func:`scsig.tl.hits`; only with an AnnData.
    x
        Column with the conditions on the x axis.
    hue
        Column that splits each condition (e.g. cell type).
    sample_key
        Column of ``adata.obs`` with the samples (donors); only with an AnnData.
    y
        Column with the fractions (0-1).
    order, hue_order
        Order of the conditions and of the ``hue`` levels.
    palette
        Colours of the ``hue`` levels (of the conditions without ``hue``): a list or a dict.
    points
        Draw one dot per unit on top of the boxes.
    size
        Dot size, in points.
    percent
        Show the fraction in percent.
    rotation
        Rotation of the x labels; ``None`` rotates long labels by 90 degrees.
    ylabel
        Y-axis label; default "hit cells (%)" (or "hit fraction") and, when the hits record says how they
        were called, the rule (e.g. "score >= 95th percentile of stim: CTRL").
    figsize
        Size of the figure, in inches.
    mod
        Modality of a :class:`~mudata.MuData`; only with a MuData.
    {doc_plot_common}
    **kwargs
        Passed to :func:`seaborn.boxplot`.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` when ``show=False`` or ``ax`` is given, the
    :class:`~matplotlib.figure.Figure` when ``return_fig=True``, else ``None``.

    Examples
    --------
    >>> import pandas as pd
    >>> import scsig as sg
    >>> frame = pd.DataFrame(
    ...     {
    ...         "condition": ["ctrl", "ctrl", "ctrl", "stim", "stim", "stim"],
    ...         "sample": ["d1", "d2", "d3", "d4", "d5", "d6"],
    ...         "fraction": [0.02, 0.05, 0.04, 0.41, 0.35, 0.52],
    ...     }
    ... )
    >>> ax = sg.pl.hit_fractions(frame, x="condition", show=False)
    """
    _check_hit_fractions_args(data, hits_key, sample_key=sample_key, kwargs=kwargs)
    frame = _fraction_table(data, hits_key, x=x, y=y, hue=hue, sample_key=sample_key, mod=mod)
    frame, x_order, h_order = _long_table(frame, x=x, y=y, hue=hue, order=order, hue_order=hue_order, percent=percent)
    levels = h_order if h_order is not None else x_order
    from_adata = palette is None and not isinstance(data, pd.DataFrame)  # colours scanpy stored for the levels
    color_source = resolve_adata(data, mod=mod, read_only=True)[1] if from_adata else None
    palette = resolve_palette(palette, levels, color_source, hue if hue is not None else x)
    n_hue = len(h_order) if h_order is not None else 1
    if figsize is None:
        figsize = (max(2.2, 0.45 * len(x_order) * (1 + 0.45 * (n_hue - 1)) + 1.2), 3.2)
    fig, a = new_axes(ax, figsize)
    common = {
        "data": frame,
        "x": x,
        "y": "_value",
        "hue": hue if hue is not None else x,
        "order": x_order,
        "hue_order": levels,
        "palette": palette,
        "ax": a,
    }
    # one unit per box (groups without samples): a box would be a flat line, so draw the dots alone
    boxes = bool((frame.groupby([x] if hue is None else [x, hue], observed=True).size() > 1).any())
    if boxes:
        opts = {
            "linewidth": 0.8,
            "width": 0.7,
            "showfliers": not points,
            "saturation": 1.0,
            "boxprops": {"alpha": 0.45},
        }
        quiet_boxplot(legend=hue is not None, **common, **(opts | kwargs))
    if points or not boxes:
        _draw_units(common, dodge=hue is not None, n_hue=n_hue, boxes=boxes, size=size)
    a.set_ylim(bottom=0)
    style_x_axis(
        a,
        xlabel=x,
        ylabel=ylabel if ylabel is not None else _hit_label(data, hits_key, percent=percent, mod=mod),
        rotation=auto_rotation(x_order) if rotation is None else rotation,
        legend_title=hue,
    )
    return finish(fig, a, ax_given=ax is not None, show=show, save=save, return_fig=return_fig, name="hit_fractions")


def _check_hit_fractions_args(
    data: Any, hits_key: str | None, *, sample_key: str | None, kwargs: dict[str, Any]
) -> None:
    """An error naming the argument that does not fit the input (a DataFrame of fractions or an AnnData)."""
    check_plot_kwargs(kwargs, "hit_fractions")
    if isinstance(data, pd.DataFrame):
        if hits_key is not None or sample_key is not None:
            msg = "hits_key= and sample_key= go with an AnnData; a DataFrame already holds the fractions."
            raise ValueError(msg)
    elif hits_key is None:
        msg = "Pass hits_key=, the hit column written by sg.tl.hits, together with an AnnData."
        raise ValueError(msg)


def _fraction_table(
    data: Any, hits_key: str | None, *, x: str, y: str, hue: str | None, sample_key: str | None, mod: str
) -> pd.DataFrame:
    """The user's table, or the fractions computed from an AnnData; with the columns the plot needs."""
    if isinstance(data, pd.DataFrame):
        frame = data
    else:
        from .. import get

        by = [x] if hue is None or hue == x else [x, hue]
        frame = get.hit_fractions(data, hits_key, groupby=by, sample_key=sample_key, mod=mod)
    missing = [c for c in (x, y, hue) if c is not None and c not in frame.columns]
    if missing:
        msg = f"Column(s) {missing} not in the hit-fraction table (columns: {list(frame.columns)})."
        raise KeyError(msg)
    return frame


def _long_table(
    frame: pd.DataFrame,
    *,
    x: str,
    y: str,
    hue: str | None,
    order: Sequence[str] | None,
    hue_order: Sequence[str] | None,
    percent: bool,
) -> tuple[pd.DataFrame, list[str], list[str] | None]:
    """A copy with the defined fractions, string labels and the plotted ``_value``; the x and hue orders."""
    frame = frame.loc[frame[y].notna()].copy()
    x_order = _categories(frame, x, order)
    frame[x] = frame[x].astype(str)
    frame["_value"] = frame[y].to_numpy(dtype=np.float64) * (100.0 if percent else 1.0)
    h_order = None
    if hue is not None:
        h_order = _categories(frame, hue, hue_order)
        frame[hue] = frame[hue].astype(str)
    return frame, x_order, h_order


def _draw_units(common: dict[str, Any], *, dodge: bool, n_hue: int, boxes: bool, size: float) -> None:
    """One dot per unit: jittered over the boxes, or larger and centred when there are no boxes."""
    import seaborn as sns

    sns.stripplot(
        **common,
        dodge=dodge,
        jitter=0.15 / n_hue if boxes else False,
        size=size if boxes else 1.5 * size,
        linewidth=0.5,
        edgecolor="0.2",
        legend=dodge and not boxes,
    )
