"""``sg.pl.compare_scores``: AUROC and depth confound of each scoring method, per group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from .._constants import UNS_KEY
from .._docs import doc_params, doc_plot_common
from .._uns import get_record
from .._utils import resolve_adata
from ._utils import check_ax, finish

if TYPE_CHECKING:
    from pathlib import Path

    from matplotlib.axes import Axes

__all__ = ["compare_scores"]

_LABELS = {"auroc": "AUROC (contrast)", "depth_rho": "|Spearman| with total counts"}


def _contrast(data: Any, table: pd.DataFrame, key: str, mod: str) -> str | None:
    """The contrast compared (``"stim: STIM vs the rest"``), from the table's attrs or the stored record."""
    if isinstance(data, pd.DataFrame):
        record = data.attrs.get(UNS_KEY)
    else:
        record = get_record(resolve_adata(data, mod=mod, read_only=True)[1], "compare", key)
    if not isinstance(record, dict) or "contrast" not in record:
        return None
    positive = ", ".join(map(str, record.get("positive", [])))
    return f"{record['contrast']}: {positive} vs the rest"


def _table(data: Any, key: str, mod: str = "rna") -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    _, data = resolve_adata(data, mod=mod, read_only=True)
    record = get_record(data, "compare", key)
    if record is None:
        msg = f"No comparison {key!r} in adata.uns['scsig']['compare']. Run sg.tl.compare_scores(..., key_added={key!r}) first."
        raise KeyError(msg)
    return pd.DataFrame({c: list(v) for c, v in record["table"].items()})


def _check_metrics(metrics: Any, table: pd.DataFrame, ax: Any) -> None:
    if isinstance(metrics, str) or not metrics:
        msg = f"metrics must be a non-empty list of comparison columns, e.g. ('auroc', 'depth_rho'); got {metrics!r}."
        raise ValueError(msg)
    for m in metrics:
        if m not in table:
            msg = f"metric {m!r} is not a column of the comparison (columns: {list(table.columns)})."
            raise KeyError(msg)
    check_ax(ax, several=True)


@doc_params(doc_plot_common=doc_plot_common)
def compare_scores(
    data: Any,
    *,
    key: str = "compare",
    metrics: tuple[str, ...] = ("auroc", "depth_rho"),
    palette: dict[str, str] | None = None,
    figsize: tuple[float, float] | None = None,
    mod: str = "rna",
    ax: Axes | list[Axes] | None = None,
    show: bool | None = None,
    save: bool | str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """Dot chart of :func:`scsig.tl.compare_scores`: one panel per metric, groups as rows, methods as colours.

    Parameters
    ----------
    data
        The DataFrame returned by :func:`scsig.tl.compare_scores`, or an AnnData it wrote to.
    key
        ``key_added`` of the comparison when ``data`` is an AnnData.
    metrics
        Columns to draw, each in its own panel: ``"auroc"`` (higher separates the contrast better; the
        dashed line is chance) and ``"depth_rho"`` (lower is less confounded by sequencing depth).
    palette
        Colour per method.
    figsize
        Figure size in inches.
    mod
        Modality of a :class:`~mudata.MuData` (as given to :func:`scsig.tl.compare_scores`).
    {doc_plot_common}

    Returns
    -------
    The list of Axes (one per metric), the Figure with ``return_fig=True``, or ``None`` when shown.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> res = sg.tl.compare_scores(adata, ["g0", "g1", "g2"], contrast="group", positive="b", methods=["attribution", "score_genes"])
    >>> axes = sg.pl.compare_scores(res, show=False)
    """
    import matplotlib.pyplot as plt

    table = _table(data, key, mod)
    _check_metrics(metrics, table, ax)
    groups = list(dict.fromkeys(table["group"]))
    methods = list(dict.fromkeys(table["method"]))
    if palette is None:
        base = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
        palette = {m: base[i % len(base)] for i, m in enumerate(methods)}
    ax_given = ax is not None
    if ax is None:
        size = figsize or (3.2 * len(metrics), 0.45 * len(groups) + 1.2)
        fig, axes = plt.subplots(1, len(metrics), figsize=size, sharey=True, squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(ax) if isinstance(ax, list | tuple) else [ax]
        if len(axes) != len(metrics):
            msg = f"Pass one Axes per metric ({len(metrics)}), got {len(axes)}."
            raise ValueError(msg)
        fig = axes[0].figure
    ypos = {g: i for i, g in enumerate(groups)}
    offsets = {m: (i - (len(methods) - 1) / 2) * 0.15 for i, m in enumerate(methods)}
    for a, metric in zip(axes, metrics, strict=True):
        for m in methods:
            sub = table[table["method"] == m]
            a.scatter(
                sub[metric],
                [ypos[g] + offsets[m] for g in sub["group"]],
                color=palette.get(m, "grey"),
                label=m,
                s=30,
                zorder=3,
            )
        if metric == "auroc":
            a.axvline(0.5, color="0.6", linestyle="--", linewidth=0.8, zorder=1)
        a.set_xlabel(_LABELS.get(metric, metric))
        a.set_yticks(range(len(groups)), groups)
        a.set_ylim(len(groups) - 0.5, -0.5)
        a.grid(axis="x", color="0.9", zorder=0)
    axes[-1].legend(frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left", title="method")
    axes[0].set_title(_contrast(data, table, key, mod) or "", loc="left", fontsize="medium")
    return finish(fig, axes, ax_given=ax_given, show=show, save=save, return_fig=return_fig, name="compare_scores")
