"""``sg.pl.rank_genes_groups_vs_expression``: a group's genes ranked by attribution against ranked by expression."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import RANK_KEY, SCANPY_RANK_KEY, UNS_KEY
from .._docs import doc_params, doc_plot_common
from .._utils import resolve_adata
from ._utils import finish, new_axes

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["rank_genes_groups_vs_expression"]


def _ranks(res: dict, group: str, keep: pd.Index | None = None) -> pd.Series:
    """Rank (1 = first) of each stored gene of ``group`` in a rank_genes_groups result, among the genes in ``keep``."""
    names = np.asarray(res["names"][group]).astype(str)
    if keep is not None:
        names = names[pd.Index(names).isin(keep)]
    return pd.Series(np.arange(1, names.size + 1, dtype=np.float64), index=pd.Index(names))


def _attributed(res: dict, group: str) -> pd.Index | None:
    """Genes with a non-zero attribution in some cell of the group or its reference (``None``: not recorded)."""
    pts, rest = res.get("pts"), res.get("pts_rest")
    if not isinstance(pts, pd.DataFrame) or not isinstance(rest, pd.DataFrame) or group not in pts or group not in rest:
        return None
    some = (pts[group].to_numpy() > 0) | (rest[group].to_numpy() > 0)
    return pd.Index(pts.index[some].astype(str))


def _attribution_result(data: AnnData, key: str, group: str) -> dict:
    res = data.uns.get(key)
    if not isinstance(res, dict) or "names" not in res:
        msg = f"adata.uns[{key!r}] holds no ranking. Run sg.tl.rank_genes_groups first (or pass key= its key_added)."
        raise KeyError(msg)
    if group not in res["names"].dtype.names:
        msg = (
            f"group {group!r} is not in the ranking adata.uns[{key!r}] (groups: {list(res['names'].dtype.names)[:20]})."
        )
        raise KeyError(msg)
    return res


def _expression_result(data: AnnData, params: dict, group: str, key: str, layer: str | None) -> tuple[dict, str]:
    """The stored expression ranking under ``key`` when it fits (same groupby and reference, has ``group``), else a new one.

    A new one is :func:`scanpy.tl.rank_genes_groups` (Wilcoxon) on ``adata.X`` (or ``layer``), computed on
    a lightweight AnnData so that ``adata`` is not written to.
    """
    import anndata as ad
    import scanpy as sc
    from scipy import sparse

    res = data.uns.get(key)
    fits = (
        isinstance(res, dict)
        and "names" in res
        and UNS_KEY not in res.get("params", {})
        and str(res["params"].get("groupby")) == str(params["groupby"])
        and str(res["params"].get("reference")) == str(params["reference"])
        and group in res["names"].dtype.names
    )
    if fits:
        return res, f"adata.uns[{key!r}]"
    x = data.X if layer is None else data.layers[layer]
    if x is None:
        msg = "adata.X is empty; pass expression_layer= the layer with log-normalized expression."
        raise ValueError(msg)
    if sparse.issparse(x) and (x.data == 0).any():
        x = x.copy()  # scanpy drops stored zeros in place; keep the caller's matrix as it is
    tmp = ad.AnnData(X=x, obs=data.obs[[params["groupby"]]].copy(), var=pd.DataFrame(index=data.var_names))
    ref = params["reference"]
    sc.tl.rank_genes_groups(tmp, params["groupby"], groups=[group], reference=ref, method="wilcoxon", use_raw=False)
    return tmp.uns[SCANPY_RANK_KEY], "sc.tl.rank_genes_groups, wilcoxon"


def _frame(
    data: AnnData, group: str, key: str, expression_key: str, expression_layer: str | None
) -> tuple[pd.DataFrame, str, dict]:
    group = str(group)
    res = _attribution_result(data, key, group)
    if expression_layer is not None and expression_layer not in data.layers:
        msg = f"expression_layer={expression_layer!r} is not in adata.layers (available: {list(data.layers)})."
        raise KeyError(msg)
    expr, source = _expression_result(data, res["params"], group, expression_key, expression_layer)
    keep = _attributed(res, group)
    ranks = {"attribution": _ranks(res, group, keep), "expression": _ranks(expr, group, keep)}
    frame = pd.concat(ranks, axis=1, join="inner")
    if frame.empty:
        msg = f"No gene of group {group!r} with attributions is ranked in both results; rank again with n_genes=None."
        raise ValueError(msg)
    return frame, source, res["params"]


def _draw(ax: Axes, frame: pd.DataFrame, *, n_labels: int, group: str, params: dict, source: str, log: bool) -> None:
    from scipy.stats import spearmanr

    top = frame.nsmallest(n_labels, "attribution")
    ax.scatter(frame["expression"], frame["attribution"], s=8, color="0.7", linewidths=0, zorder=2)
    ax.scatter(top["expression"], top["attribution"], s=14, color="C3", linewidths=0, zorder=3)
    for gene, row in top.iterrows():
        ax.annotate(
            str(gene), (row["expression"], row["attribution"]), xytext=(3, 2), textcoords="offset points", fontsize=7
        )
    n = float(frame.to_numpy().max())
    ax.plot([1, n], [1, n], color="0.5", linestyle="--", linewidth=0.8, zorder=1)
    if log:  # spreads out the top genes, which otherwise pile up in a corner when thousands of genes are drawn
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = 0.8, n * 1.25
    else:
        lo, hi = 0.5, n + 0.5
    ax.set_xlim(hi, lo)  # rank 1 (top) at the right and the top: the genes that matter sit up and right
    ax.set_ylim(hi, lo)
    rho = spearmanr(frame["expression"], frame["attribution"]).statistic if len(frame) > 2 else np.nan
    ax.set_xlabel(f"expression rank\n({source})")
    ax.set_ylabel(f"attribution rank ({params.get('layer', 'attribution')})")
    ax.set_title(f"{group} vs {params.get('reference', 'rest')}: Spearman {rho:.2f}, {len(frame)} genes")


@doc_params(doc_plot_common=doc_plot_common)
def rank_genes_groups_vs_expression(
    adata: Any,
    group: str,
    *,
    key: str = RANK_KEY,
    expression_key: str = SCANPY_RANK_KEY,
    expression_layer: str | None = None,
    n_labels: int = 10,
    log: bool = True,
    figsize: tuple[float, float] = (4.5, 4.5),
    mod: str = "rna",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | Path | None = None,
    return_fig: bool = False,
) -> Any:
    """Scatter of a group's genes: rank by attribution (:func:`scsig.tl.rank_genes_groups`) against rank by expression.

    Each point is a gene, at its rank in the group by attribution (y) and by differential
    expression (x), both against the same reference; rank 1 (the top gene) sits at the top and the
    right, on log-scaled axes by default. The ``n_labels`` top genes by attribution are labelled.
    Genes above the diagonal matter more to the model than their differential expression
    suggests; genes below it are differentially expressed but carry little of the model's
    attribution. The title gives the Spearman correlation of the two ranks.

    The expression ranking is :func:`scanpy.tl.rank_genes_groups`' result in
    ``adata.uns[expression_key]`` when it has the same ``groupby`` and ``reference`` and holds
    ``group``; otherwise it is computed (Wilcoxon, on ``adata.X`` or ``expression_layer``, which
    should hold log-normalized expression) without writing into ``adata``. Only genes ranked in
    both results are drawn, and only genes with a non-zero attribution in some cell of the group or
    its reference: the others (genes the model does not have, or that none of these cells
    expresses) all tie at a score of 0, so their attribution ranks would be an arbitrary order.
    Ranks are counted among the genes drawn, on both axes.

    Parameters
    ----------
    adata
        The AnnData (or MuData) that :func:`scsig.tl.rank_genes_groups` wrote to.
    group
        The group to show.
    key
        ``key_added`` of :func:`scsig.tl.rank_genes_groups`.
    expression_key
        Key of a stored :func:`scanpy.tl.rank_genes_groups` result to reuse.
    expression_layer
        Layer with log-normalized expression when the expression ranking is computed; ``None`` reads ``adata.X``.
    n_labels
        Top genes by attribution to label.
    log
        Log-scaled rank axes, which spread out the top genes when thousands of genes are drawn;
        ``False``: linear axes.
    figsize
        Figure size in inches when no ``ax`` is given.
    mod
        Modality of a :class:`~mudata.MuData`.
    {doc_plot_common}

    Returns
    -------
    The Axes, the Figure with ``return_fig=True``, or ``None`` when shown.

    Examples
    --------
    >>> import scanpy as sc
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> sg.tl.rank_genes_groups(adata, "group")
    >>> ax = sg.pl.rank_genes_groups_vs_expression(adata, "b", show=False)
    """
    if isinstance(n_labels, bool) or not isinstance(n_labels, int | np.integer) or n_labels < 0:
        msg = f"n_labels must be a non-negative integer, got {n_labels!r}."
        raise ValueError(msg)
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    frame, source, params = _frame(data, group, key, expression_key, expression_layer)
    fig, ax_ = new_axes(ax, figsize)
    _draw(ax_, frame, n_labels=int(n_labels), group=str(group), params=params, source=source, log=bool(log))
    return finish(
        fig,
        ax_,
        ax_given=ax is not None,
        show=show,
        save=save,
        return_fig=return_fig,
        name="rank_genes_groups_vs_expression",
    )
