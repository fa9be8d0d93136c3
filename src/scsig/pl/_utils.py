"""Plumbing shared by the plots: axes, colours, group labels, and scanpy's show/save/return contract."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._settings import settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "check_ax",
    "score_label",
    "hit_rule",
    "category_colors",
    "check_plot_kwargs",
    "finish",
    "group_labels",
    "new_axes",
    "obs_categories",
    "palette_for",
    "save_path",
]

_SCANPY_ONLY = {
    "use_raw": "scsig plots read adata.obs and the attribution layer, never adata.raw; drop use_raw=",
    "gene_symbols": "pass the genes as they are in adata.var_names",
    "log": "scores are shares of a fixed total; plot them on a linear scale",
}


def check_plot_kwargs(kwargs: dict[str, Any], func: str) -> None:
    """A clear error for scanpy plotting options that do not apply here (instead of a seaborn traceback)."""
    for key, why in _SCANPY_ONLY.items():
        if key in kwargs:
            msg = f"sg.pl.{func} does not take {key}= (a scanpy option that does not apply here): {why}."
            raise TypeError(msg)


def save_path(*, save: bool | str | Path | None, name: str) -> Path | None:
    """Where ``save=`` writes, as in scanpy.

    ``True``: ``{figdir}/{name}.{format}``; a string without a folder (``"_suffix.png"``):
    ``{figdir}/{name}{suffix}`` (scanpy's default format appended when it has no extension); a
    path with a folder, or a :class:`~pathlib.Path`: that path. ``figdir`` and ``format`` are
    ``scanpy.settings.figdir`` and ``scanpy.settings.file_format_figs``. Missing folders are created.
    """
    if save is None or save is False:
        return None
    import scanpy as sc

    fmt = str(sc.settings.file_format_figs).lstrip(".")
    if save is True:
        path = Path(sc.settings.figdir) / f"{name}.{fmt}"
    elif isinstance(save, Path) or "/" in str(save) or "\\" in str(save):
        path = Path(save)
    elif isinstance(save, str):
        suffix = (
            save
            if Path(save).suffix in {".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff", ".eps"}
            else f"{save}.{fmt}"
        )
        path = Path(sc.settings.figdir) / f"{name}{suffix}"
    else:
        msg = f"save must be True, a filename suffix or a path, not {type(save).__name__}."
        raise TypeError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def score_label(data: Any, key: str) -> str:
    """An axis label for the score column ``key``: its name and, when recorded, how it was scored (``"score (cosine)"``)."""
    from .._uns import score_record

    record = score_record(data, key)
    mode = record.get("mode") if record is not None else None
    return f"{key} ({mode})" if isinstance(mode, str) else key


def hit_rule(record: dict | None) -> str | None:
    """How hits were called, in words (``"score >= 95th percentile of stim: CTRL"``), from a hits record."""
    if not isinstance(record, dict) or "mode" not in record or "cut" not in record:
        return None
    cut, mode = float(record["cut"]), str(record["mode"])
    rule = {
        "percentile": f"{cut:g}th percentile",
        "quantile": f"{cut:g} quantile",
        "zscore": f"z {cut:g}",
    }.get(mode, f"{cut:g}")
    reference = str(record.get("reference", "all cells"))
    where = f" of {reference}" if mode in ("percentile", "quantile", "zscore") and reference != "all cells" else ""
    return f"{record.get('key', 'score')} {'>=' if record.get('above', True) else '<='} {rule}{where}"


def check_ax(ax: Any, *, several: bool = False) -> None:
    """``ax`` is None or a matplotlib Axes (with ``several``, also a sequence of Axes), else a TypeError."""
    from matplotlib.axes import Axes

    if ax is None or isinstance(ax, Axes):
        return
    if several and not isinstance(ax, str) and hasattr(ax, "__len__") and all(isinstance(a, Axes) for a in ax):
        return
    msg = f"ax must be a matplotlib Axes (e.g. from plt.subplots()){' or a list of them' if several else ''}, not {type(ax).__name__} ({ax!r:.40})."
    raise TypeError(msg)


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure of ``figsize`` inches with one Axes."""
    import matplotlib.pyplot as plt

    check_ax(ax)
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def finish(
    fig: Figure,
    axes: Axes | list[Axes],
    *,
    ax_given: bool,
    show: bool | None,
    save: bool | str | Path | None,
    return_fig: bool,
    name: str = "scsig",
) -> Any:
    """Save, show and return as scanpy does.

    ``return_fig`` -> the Figure; otherwise, when the figure is shown (``show``, or
    :attr:`scsig.settings.autoshow` when ``show=None``) -> ``None``, else the Axes. Never calls
    :func:`matplotlib.pyplot.show` for a caller's ``ax``.
    """
    path = save_path(save=save, name=name)
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    if return_fig:
        return fig
    if ax_given:
        return axes
    if settings.autoshow if show is None else show:
        import matplotlib.pyplot as plt

        plt.show()
        return None
    return axes


def obs_categories(adata: AnnData, key: str) -> pd.Series:
    """``adata.obs[key]`` as a categorical Series, with an error naming the columns when it is missing."""
    if key not in adata.obs:
        msg = f"{key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:20]})."
        raise KeyError(msg)
    col = adata.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.remove_unused_categories()
    if pd.api.types.is_float_dtype(col.dtype):
        msg = f"adata.obs[{key!r}] holds floats; group by a categorical (or string/integer) column."
        raise TypeError(msg)
    return col.astype("category")


def group_labels(adata: AnnData, groupby: str | Sequence[str]) -> pd.Series:
    """One categorical label per cell; several columns are joined with ``"_"`` (categories in product order)."""
    keys = [groupby] if isinstance(groupby, str) else list(groupby)
    if not keys:
        msg = "groupby must name at least one column of adata.obs."
        raise ValueError(msg)
    cols = [obs_categories(adata, k) for k in keys]
    if len(cols) == 1:
        return cols[0]
    labels = cols[0].astype(str)
    for col in cols[1:]:
        labels = labels + "_" + col.astype(str)
    order = [
        "_".join(parts)
        for parts in pd.MultiIndex.from_product([c.cat.categories.astype(str) for c in cols]).to_flat_index()
    ]
    present = set(labels)
    cats = pd.Categorical(labels, categories=[o for o in order if o in present])
    return pd.Series(cats, index=adata.obs_names, name="_".join(keys))


def category_colors(adata: AnnData | None, key: str | None, categories: Sequence[Any]) -> list[str]:
    """Colours for ``categories``: ``adata.uns[f"{key}_colors"]`` when it fits, else scanpy's default palettes.

    Never writes into ``adata``.
    """
    from matplotlib.colors import to_hex
    from scanpy.plotting import palettes

    n = len(categories)
    if adata is not None and key is not None:
        stored = adata.uns.get(f"{key}_colors")
        if stored is not None and len(stored) >= n:
            return [to_hex(c) for c in list(stored)[:n]]
    if n <= 20:
        base = palettes.default_20
    elif n <= 28:
        base = palettes.default_28
    else:
        base = palettes.default_102
    return [base[i % len(base)] for i in range(n)]


def check_kind(kind: str, allowed: Sequence[str]) -> None:
    """Raise a ValueError naming the allowed kinds."""
    if kind not in allowed:
        msg = f"kind must be one of {list(allowed)}, not {kind!r}."
        raise ValueError(msg)


def as_float_array(values: Any) -> np.ndarray:
    """A dense float64 1-D or 2-D array from a numpy/sparse/matrix input."""
    from scipy import sparse

    if sparse.issparse(values):
        values = values.toarray()
    return np.asarray(values, dtype=np.float64)


def palette_for(palette: Any, levels: list) -> dict:
    """A user's ``palette`` (a colour, a list of colours, or a dict level -> colour) as a dict over ``levels``."""
    if isinstance(palette, dict):
        return palette
    colors = [palette] if isinstance(palette, str) else list(palette)
    if len(colors) < len(levels):
        msg = (
            f"palette has {len(colors)} colour(s) for {len(levels)} levels ({list(levels)[:10]}); pass one "
            "colour per level, or a dict level -> colour."
        )
        raise ValueError(msg)
    return dict(zip(levels, colors, strict=False))


def auto_rotation(labels: Sequence[Any]) -> float:
    """Rotation of the x tick labels: 90 degrees when the labels are long together, else 0."""
    return 90.0 if sum(len(str(s)) for s in labels) > 24 else 0.0


def resolve_palette(palette: Any, levels: list, adata: AnnData | None, key: str | None) -> dict:
    """A dict level -> colour: the user's ``palette``, or :func:`category_colors` of ``key`` when it is ``None``."""
    if palette is None:
        return dict(zip(levels, category_colors(adata, key, levels), strict=True))
    return palette_for(palette, levels)


def quiet_boxplot(**kwargs: Any) -> Any:
    """:func:`seaborn.boxplot` without seaborn 0.13's deprecation warning about matplotlib's ``vert``."""
    import warnings

    import seaborn as sns

    with warnings.catch_warnings():
        # seaborn 0.13 passes matplotlib's deprecated ``vert``; nothing the user can act on
        warnings.filterwarnings("ignore", message=".*vert: bool was deprecated", category=DeprecationWarning)
        return sns.boxplot(**kwargs)


def style_x_axis(ax: Axes, *, xlabel: str, ylabel: str, rotation: float, legend_title: str | None) -> None:
    """Axis labels, rotated x tick labels (when ``rotation``), and the legend moved right of ``ax`` (when titled)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if rotation:
        ax.tick_params(axis="x", labelrotation=rotation)
    if legend_title is not None and ax.get_legend() is not None:
        import seaborn as sns

        sns.move_legend(ax, "center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title=legend_title)
