"""``sg.get.signature``: a group's top-ranked genes as a weighted signature for ``sg.tl.score``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from .._constants import RANK_KEY
from .._docs import doc_mod, doc_params
from .._utils import resolve_adata
from .._utils._warn import user_stacklevel

__all__ = ["signature"]


def _ranking(data: Any, key: str) -> dict:
    res = data.uns.get(key)
    if not isinstance(res, dict) or "names" not in res or "scores" not in res:
        msg = (
            f"adata.uns[{key!r}] holds no gene ranking. Run sg.tl.rank_genes_groups first (or pass key= its key_added)."
        )
        raise KeyError(msg)
    return res


def _check_n_genes(n_genes: Any) -> int:
    if isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or n_genes < 1:
        msg = f"n_genes must be a positive integer, got {n_genes!r}."
        raise ValueError(msg)
    return int(n_genes)


@doc_params(doc_mod=doc_mod)
def signature(
    adata: Any,
    group: str,
    *,
    key: str = RANK_KEY,
    n_genes: int = 50,
    weighted: bool = True,
    pval_cutoff: float | None = None,
    mod: str = "rna",
) -> pd.Series:
    """A group's top genes of :func:`scsig.tl.rank_genes_groups` as a signature: gene -> weight.

    The genes are the group's first ``n_genes`` by score among those with a positive score (more
    attribution in the group than in its reference) and, with ``pval_cutoff``, an adjusted p-value
    below it. Their weight is their mean attribution in the group (``weighted=True``), so the
    signature is the group's typical attribution profile over those genes: with the default
    ``mode="cosine"`` of :func:`scsig.tl.score` a cell scores 1 when its attributions over the genes
    are proportional to the group's mean. ``weighted=False`` gives every gene weight 1.

    Parameters
    ----------
    adata
        The AnnData (or MuData) that :func:`scsig.tl.rank_genes_groups` wrote to.
    group
        One group of the ranking.
    key
        ``key_added`` of the ranking.
    n_genes
        Most genes to return. Fewer come back when fewer pass (with a warning when the ranking stores fewer).
    weighted
        Weight by mean attribution in the group (needs a ranking by scsig), or give every gene weight 1.
    pval_cutoff
        Keep genes with an adjusted p-value below this.
    {doc_mod}

    Returns
    -------
    A float64 :class:`pandas.Series` indexed by gene, in rank order, which :func:`scsig.tl.score`
    and :meth:`scsig.Atlas.score` take as a weighted signature (or, in a dict name -> Series, as
    one of several).

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> sg.tl.rank_genes_groups(adata, "group")
    >>> sig = sg.get.signature(adata, "b", n_genes=5)
    >>> sg.tl.score(adata, sig, key_added="b_signature")
    """
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    res = _ranking(data, key)
    n_genes = _check_n_genes(n_genes)
    groups = list(res["names"].dtype.names)
    if str(group) not in groups:
        msg = f"group {group!r} is not in the ranking adata.uns[{key!r}] (groups: {groups[:20]})."
        raise KeyError(msg)
    group = str(group)
    names = pd.Index(np.asarray(res["names"][group]).astype(str))
    keep = np.asarray(res["scores"][group], dtype=np.float64) > 0
    if pval_cutoff is not None:
        keep &= np.asarray(res["pvals_adj"][group], dtype=np.float64) < float(pval_cutoff)
    if not keep.any():
        msg = (
            f"No gene of group {group!r} has a positive score{' and pvals_adj < ' + str(pval_cutoff) if pval_cutoff is not None else ''}; "
            "the group has no gene with more attribution than its reference to build a signature from."
        )
        raise ValueError(msg)
    if n_genes > names.size and names.size < data.n_vars:
        warnings.warn(
            f"The ranking stores {names.size} genes per group, fewer than n_genes={n_genes}; rank again with "
            "a larger n_genes (or None) for more.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    genes = names[keep][:n_genes]
    if not weighted:
        return pd.Series(1.0, index=genes, name=group, dtype=np.float64)
    if "means" not in res:
        msg = f"adata.uns[{key!r}] has no mean attributions ('means'; not a ranking by sg.tl.rank_genes_groups); pass weighted=False."
        raise KeyError(msg)
    return pd.Series(res["means"][group].loc[genes].to_numpy(np.float64), index=genes, name=group)
