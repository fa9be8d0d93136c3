"""``sg.pl.scores``: signature scores per group as violins, boxes or strips."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .._constants import SCORE_KEY
from .._docs import doc_mod, doc_params, doc_plot_common
from .._utils import resolve_adata
from ._utils import category_colors, check_kind, check_plot_kwargs, finish, group_labels, obs_categories, palette_for

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


def _auto_rotation(labels: Sequence[str]) -> float:
    return 90.0 if sum(len(str(s)) for s in labels) > 24 else 0.0


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
    (width-normalized, cut at the data range), boxes, or a strip of one dot per cell; with
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
        Y-axis label; default the score's name.
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
    >>> sg.tl.attribute(adata, model, progress=False)
    >>> sg.tl.score(adata, ["g0", "g1", "g2"])
    >>> ax = sg.pl.scores(adata, "score", groupby="group", show=False)
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    check_kind(kind, _KINDS)
    check_plot_kwargs(kwargs, "scores")
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    keys = _score_keys(data, key)
    if ax is not None and len(keys) > 1:
        msg = f"ax= takes one score, but {len(keys)} were given ({keys}); leave ax=None for one panel each."
        raise ValueError(msg)

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
    if palette is None:
        cats = list(splits.cat.categories) if split is not None else group_order
        palette = dict(zip(hue_order, category_colors(data, color_key, cats), strict=True))
    else:
        palette = palette_for(palette, hue_order)
    draw_points = (kind == "violin") if points is None else points
    dodge = split is not None
    rot = _auto_rotation(group_order) if rotation is None else rotation

    n_hue = len(hue_order) if split is not None else 1
    if figsize is None:
        figsize = (max(2.5, 0.35 * len(group_order) * (1 + 0.5 * (n_hue - 1)) + 1.2), 3.2)
    if ax is None:
        fig, axs = plt.subplots(
            1,
            len(keys),
            figsize=(figsize[0] * len(keys), figsize[1]),
            squeeze=False,
            layout="constrained" if len(keys) > 1 else None,
        )
        axes = list(axs[0])
    else:
        fig, axes = ax.figure, [ax]

    common = {"x": "group", "hue": hue, "order": group_order, "hue_order": hue_order, "palette": palette}
    for k, a in zip(keys, axes, strict=True):
        frame["value"] = np.asarray(data.obs[k], dtype=np.float64)
        show_legend = split is not None and a is axes[-1]  # one legend, right of the last panel
        if kind == "violin":
            opts = {"inner": None, "cut": 0, "density_norm": "width", "linewidth": 0.6, "saturation": 1.0}
            opts["split"] = n_hue == 2
            sns.violinplot(data=frame, y="value", ax=a, legend=show_legend, **common, **(opts | kwargs))
        elif kind == "box":
            opts = {"showfliers": not draw_points, "fliersize": 1.0, "linewidth": 0.6, "width": 0.7, "saturation": 1.0}
            with warnings.catch_warnings():
                # seaborn 0.13 passes matplotlib's deprecated ``vert``; nothing the user can act on
                warnings.filterwarnings("ignore", message=".*vert: bool was deprecated", category=DeprecationWarning)
                sns.boxplot(data=frame, y="value", ax=a, legend=show_legend, **common, **(opts | kwargs))
        else:
            opts = {"size": 3.0 if size is None else size, "jitter": 0.25, "dodge": dodge}
            sns.stripplot(data=frame, y="value", ax=a, legend=show_legend, **common, **(opts | kwargs))
        if draw_points and kind != "strip":
            sns.stripplot(
                data=frame,
                x="group",
                y="value",
                hue=hue if dodge else None,
                order=group_order,
                hue_order=hue_order if dodge else None,
                palette=["black"] * n_hue if dodge else None,
                color=None if dodge else "black",
                dodge=dodge,
                size=1.0 if size is None else size,
                jitter=0.2 / (n_hue if dodge else 1),
                alpha=0.6,
                legend=False,
                ax=a,
            )
        a.set_xlabel(groups.name if isinstance(groups.name, str) else "")
        a.set_ylabel(ylabel if ylabel is not None else k)
        if rot:
            a.tick_params(axis="x", labelrotation=rot)
        if show_legend and a.get_legend() is not None:
            sns.move_legend(a, "center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title=split)
    return finish(
        fig,
        axes[0] if len(axes) == 1 else axes,
        ax_given=ax is not None,
        show=show,
        save=save,
        return_fig=return_fig,
        name="scores",
    )
