"""``sg.pl.scores``: signature scores per group as violins, boxes or strips."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._constants import SCORE_KEY
from .._docs import doc_mod, doc_params, doc_plot_common
from .._utils import resolve_adata
from ._utils import (
    auto_rotation,
    check_ax,
    check_kind,
    check_plot_kwargs,
    finish,
    group_labels,
    obs_categories,
    quiet_boxplot,
    resolve_palette,
    score_label,
    style_x_axis,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["scores"]

_KINDS = ("violin", "box", "strip")


def _score_keys(adata: AnnData, key: str | Sequence[str]) -> list[str]:
    """Expand ``key`` to obs columns: a column, a list of columns, or an ``obsm`` DataFrame of several scores."""
    keys = [key] if isinstance(key, str) else list(key)
    if not keys:
        msg = "key must name at least one score column of adata.obs."
        raise ValueError(msg)
    out: list[str] = []
    for k in keys:
        if k in adata.obs:
            out.append(k)
        elif isinstance(adata.obsm.get(k), pd.DataFrame):
            out.extend(f"{k}_{c}" if f"{k}_{c}" in adata.obs else c for c in adata.obsm[k].columns)
        else:
            msg = f"No score {k!r} in adata.obs (or adata.obsm). Run sg.tl.score(..., key_added={k!r}) first."
            raise KeyError(msg)
    for k in out:
        if k not in adata.obs:
            msg = f"Score column {k!r} is not in adata.obs."
            raise KeyError(msg)
        if not pd.api.types.is_numeric_dtype(adata.obs[k].dtype) or pd.api.types.is_bool_dtype(adata.obs[k].dtype):
            msg = f"adata.obs[{k!r}] is not a numeric score (dtype {adata.obs[k].dtype})."
            raise TypeError(msg)
    return out


@doc_params(doc_mod=doc_mod, doc_plot_common=doc_plot_common)
def scores(
    adata: Any,
    key: str | Sequence[str] = SCORE_KEY,
    *,
    groupby: str | Sequence[str] | None = None,
    split: str | None = None,
    kind: Literal["violin", "box", "strip"] = "violin",
    order: Sequence[str] | None = None,
    points: bool | None = None,
    size: float | None = None,
    palette: Sequence[str] | dict[str, str] | None = None,
    rotation: float | None = None,
    ylabel: str | None = None,
    figsize: tuple[float, float] | None = None,
    mod: str = "rna",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | Path | None = None,
    return_fig: bool = False,
    **kwargs: Any,
) -> Axes | list[Axes] | Figure | None:
    """Plot signature scores per group of cells, optionally split by a condition.

    Draws the distribution of ``adata.obs[key]`` in each group of ``groupby`` as violins
    (width-normalized, the quartiles as dashed lines), boxes, or a strip of one dot per cell.
    A violin's density tapers for half a bandwidth past its group's lowest and highest cells
    (``cut=0.5``; cut at them, a wide end would read as a ceiling of the score), and never below
    zero when no score is negative. With
    ``split`` the groups are further divided by a second column (e.g. the condition), as split
    violins when it has two levels and side-by-side shapes otherwise. Colours come from
    ``adata.uns[f"{{split}}_colors"]`` (or ``groupby``'s) when scanpy has set them, and from
    scanpy's default palette otherwise. Any score column works, e.g. one from
    :func:`scanpy.tl.score_genes` for a side-by-side comparison.

    Parameters
    ----------
    adata
        Annotated data matrix with the score(s) in ``obs``.
    key
        Score column of ``adata.obs`` (default: :func:`scsig.tl.score`'s ``"score"``), a list of
        columns, or the ``adata.obsm`` key of several signatures scored at once; several scores
        give one panel each.
    groupby
        Column(s) of ``adata.obs`` with the groups on the x axis; several columns are combined.
        ``None``: one distribution of all cells.
    split
        Column of ``adata.obs`` that splits each group (hue), e.g. the condition.
    kind
        ``"violin"``, ``"box"`` or ``"strip"``.
    order
        Order of the groups; default the categories' order.
    points
        Overlay one dot per cell on violins and boxes. ``None``: on for violins, off for boxes.
    size
        Dot size of the cells, in points; ``None``: 1 on violins and boxes, 3 for strips.
    palette
        Colours of the split levels (or of the groups without ``split``): a list or a dict.
    rotation
        Rotation of the group labels; ``None`` rotates long labels by 90 degrees.
    ylabel
        Y-axis label; default the score's name and the mode it was scored with (``"score (cosine)"``).
    figsize
        Size of the figure (of one panel with several scores), in inches.
    {doc_mod}
    {doc_plot_common}
    **kwargs
        Passed to :func:`seaborn.violinplot`, :func:`seaborn.boxplot` or :func:`seaborn.stripplot`.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` (a list of them for several scores) when ``show=False``
    or ``ax`` is given, the :class:`~matplotlib.figure.Figure` when ``return_fig=True``, else ``None``.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> sg.tl.score(adata, ["g0", "g1", "g2"])
    >>> ax = sg.pl.scores(adata, "score", groupby="group", show=False)
    """
    data, keys = _check_scores_args(adata, key, kind=kind, mod=mod, ax=ax, kwargs=kwargs)
    spec = _panel_spec(data, groupby=groupby, split=split, order=order, palette=palette)
    draw_points = (kind == "violin") if points is None else points
    rot = auto_rotation(spec.group_order) if rotation is None else rotation
    if figsize is None:
        figsize = (max(2.5, 0.35 * len(spec.group_order) * (1 + 0.5 * (spec.n_hue - 1)) + 1.2), 3.2)
    fig, axes = _score_axes(ax, len(keys), figsize)
    for k, a in zip(keys, axes, strict=True):
        spec.frame["value"] = np.asarray(data.obs[k], dtype=np.float64)
        show_legend = split is not None and a is axes[-1]  # one legend, right of the last panel
        _draw_distribution(a, spec, kind=kind, draw_points=draw_points, size=size, legend=show_legend, kwargs=kwargs)
        if draw_points and kind != "strip":
            _overlay_cells(a, spec, size=size)
        style_x_axis(
            a,
            xlabel=spec.xlabel,
            ylabel=ylabel if ylabel is not None else score_label(data, k),
            rotation=rot,
            legend_title=split if show_legend else None,
        )
    return finish(
        fig,
        axes[0] if len(axes) == 1 else axes,
        ax_given=ax is not None,
        show=show,
        save=save,
        return_fig=return_fig,
        name="scores",
    )


def _check_scores_args(
    adata: Any, key: str | Sequence[str], *, kind: str, mod: str, ax: Axes | None, kwargs: dict[str, Any]
) -> tuple[AnnData, list[str]]:
    """The AnnData to plot and its score columns, or an error naming the bad argument."""
    check_kind(kind, _KINDS)
    check_plot_kwargs(kwargs, "scores")
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    keys = _score_keys(data, key)
    if ax is not None and len(keys) > 1:
        msg = f"ax= takes one score, but {len(keys)} were given ({keys}); leave ax=None for one panel each."
        raise ValueError(msg)
    return data, keys


@dataclass(frozen=True)
class _PanelSpec:
    """What every panel of one :func:`scores` call shares: the long table and its groups, hues and colours."""

    frame: pd.DataFrame
    """One row per cell: ``group``, ``hue`` (with ``split``) and the current panel's ``value``."""
    group_order: list[str]
    hue: str
    hue_order: list[str]
    palette: dict
    split: bool
    xlabel: str

    @property
    def n_hue(self) -> int:
        return len(self.hue_order) if self.split else 1


def _panel_spec(
    data: AnnData,
    *,
    groupby: str | Sequence[str] | None,
    split: str | None,
    order: Sequence[str] | None,
    palette: Sequence[str] | dict[str, str] | None,
) -> _PanelSpec:
    """Group and split labels per cell, their orders, and the colours of the hue levels."""
    if groupby is None:  # one distribution of all cells, as sc.pl.violin without groupby
        groups = pd.Series(pd.Categorical(["all cells"] * data.n_obs), index=data.obs_names, name="")
    else:
        groups = group_labels(data, groupby)
    group_order = [str(g) for g in (order if order is not None else groups.cat.categories)]
    unknown = sorted(set(group_order) - {str(c) for c in groups.cat.categories})
    if unknown:
        msg = f"order names groups that are not in {groups.name!r}: {unknown[:5]}."
        raise ValueError(msg)
    frame = pd.DataFrame({"group": groups.astype(str).to_numpy()}, index=data.obs_names)
    if split is not None:
        splits = obs_categories(data, split)
        hue_order = [str(c) for c in splits.cat.categories]
        frame["hue"] = splits.astype(str).to_numpy()
        hue, color_key = "hue", split
    else:
        hue_order = group_order
        hue, color_key = "group", (groupby if isinstance(groupby, str) else None)
    return _PanelSpec(
        frame=frame,
        group_order=group_order,
        hue=hue,
        hue_order=hue_order,
        palette=resolve_palette(palette, hue_order, data, color_key),
        split=split is not None,
        xlabel=groups.name if isinstance(groups.name, str) else "",
    )


def _score_axes(ax: Axes | None, n_panels: int, figsize: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """The caller's ``ax``, or a new row of ``n_panels`` axes of ``figsize`` inches each."""
    import matplotlib.pyplot as plt

    check_ax(ax)
    if ax is not None:
        return ax.figure, [ax]
    fig, axs = plt.subplots(
        1,
        n_panels,
        figsize=(figsize[0] * n_panels, figsize[1]),
        squeeze=False,
        layout="constrained" if n_panels > 1 else None,
    )
    return fig, list(axs[0])


def _draw_distribution(
    a: Axes,
    spec: _PanelSpec,
    *,
    kind: str,
    draw_points: bool,
    size: float | None,
    legend: bool,
    kwargs: dict[str, Any],
) -> None:
    """The violins, boxes or strip of the current ``value`` column."""
    import seaborn as sns

    common = {
        "x": "group",
        "hue": spec.hue,
        "order": spec.group_order,
        "hue_order": spec.hue_order,
        "palette": spec.palette,
    }
    if kind == "violin":
        # A density estimate tapers past the extreme cells; cut at them (cut=0) a violin ends flat there and a wide
        # end reads as a ceiling. Half a bandwidth of taper, never below zero for a score that cannot be negative.
        opts = {"inner": "quart", "cut": 0.5, "density_norm": "width", "linewidth": 0.6, "saturation": 1.0}
        opts["split"] = spec.n_hue == 2
        before = len(a.collections)
        sns.violinplot(data=spec.frame, y="value", ax=a, legend=legend, **common, **(opts | kwargs))
        if spec.frame["value"].min() >= 0:
            _clip_below_zero(a, a.collections[before:])
    elif kind == "box":
        opts = {"showfliers": not draw_points, "fliersize": 1.0, "linewidth": 0.6, "width": 0.7, "saturation": 1.0}
        quiet_boxplot(data=spec.frame, y="value", ax=a, legend=legend, **common, **(opts | kwargs))
    else:
        opts = {"size": 3.0 if size is None else size, "jitter": 0.25, "dodge": spec.split}
        sns.stripplot(data=spec.frame, y="value", ax=a, legend=legend, **common, **(opts | kwargs))


def _clip_below_zero(a: Axes, artists: Sequence[Any]) -> None:
    """Clip ``artists`` (the violins' bodies) to y >= 0: a non-negative score's density has nothing below zero."""
    from matplotlib.patches import Rectangle

    (x0, x1), (_, y1) = a.get_xlim(), a.get_ylim()
    span = max(abs(x1 - x0), 1.0)
    keep = Rectangle((x0 - span, 0.0), 3 * span, 2 * max(abs(y1), 1.0), transform=a.transData)
    for artist in artists:
        artist.set_clip_path(keep)


def _overlay_cells(a: Axes, spec: _PanelSpec, *, size: float | None) -> None:
    """One black dot per cell over the violins or boxes (dodged by hue with ``split``)."""
    import seaborn as sns

    dodge = spec.split
    sns.stripplot(
        data=spec.frame,
        x="group",
        y="value",
        hue=spec.hue if dodge else None,
        order=spec.group_order,
        hue_order=spec.hue_order if dodge else None,
        palette=["black"] * spec.n_hue if dodge else None,
        color=None if dodge else "black",
        dodge=dodge,
        size=1.0 if size is None else size,
        jitter=0.2 / (spec.n_hue if dodge else 1),
        alpha=0.6,
        legend=False,
        ax=a,
    )
