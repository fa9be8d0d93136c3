"""``sg.tl.hits``: call the cells whose signature score passes a threshold."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._constants import SCORE_KEY, UNS_KEY
from .._docs import doc_adata, doc_copy, doc_mod, doc_params
from .._utils import check_choice, literal_values, resolve_adata, wrap_return

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["hits"]

Mode = Literal["percentile", "quantile", "value", "zscore"]
MODES = literal_values(Mode)

_DEFAULT_CUT = {("percentile", True): 90.0, ("percentile", False): 10.0}
_DEFAULT_CUT |= {("quantile", True): 0.9, ("quantile", False): 0.1}
_DEFAULT_CUT |= {("zscore", True): 2.0, ("zscore", False): -2.0}


def _threshold(values: np.ndarray, mode: str, cut: float) -> tuple[float, float, float]:
    """(threshold on the raw score, mean, std) for the finite ``values`` of one group."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.nan, np.nan, np.nan
    mean, std = float(finite.mean()), float(finite.std())
    if mode == "percentile":
        return float(np.percentile(finite, cut)), mean, std
    if mode == "quantile":
        return float(np.quantile(finite, cut)), mean, std
    if mode == "zscore":
        return (mean + cut * std if std > 0 else np.nan), mean, std
    return float(cut), mean, std


@doc_params(doc_adata=doc_adata, doc_copy=doc_copy, doc_mod=doc_mod)
def hits(
    adata: Any,
    key: str = SCORE_KEY,
    *,
    mode: Mode = "percentile",
    cut: float | None = None,
    above: bool = True,
    groupby: str | None = None,
    key_added: str | None = None,
    mod: str = "rna",
    copy: bool = False,
) -> AnnData | Any | None:
    r"""Call hits: the cells whose score passes a threshold, overall or within each group.

    The threshold :math:`\theta` is set on the scores in ``adata.obs[key]`` (over all cells, or
    separately within each group of ``groupby``), and a cell is a hit when
    :math:`s \ge \theta` (``above=True``) or :math:`s \le \theta` (``above=False``). The modes:

    ``"percentile"``
        ``cut`` in [0, 100]: :math:`\theta` is the ``cut``-th percentile of the scores
        (:func:`numpy.percentile`, linear interpolation). ``cut=90`` calls about the top 10 % of
        cells; with ``above=False``, ``cut=10`` the bottom 10 %. Default 90 (10 below).
    ``"quantile"``
        The same with ``cut`` in [0, 1] (:func:`numpy.quantile`). Default 0.9 (0.1 below).
    ``"value"``
        ``cut`` is an absolute score threshold, :math:`\theta` = ``cut``; no default. With
        ``groupby`` every group gets the same threshold. Scores from attributions are shares of
        ``target_sum`` (see :func:`scsig.tl.score`), so absolute values compare across data sets
        only when the model, method and ``target_sum`` are the same.
    ``"zscore"``
        ``cut`` is a threshold on the standardized score :math:`z = (s - \bar s)/\sigma`, with
        the mean and population standard deviation (``ddof=0``) of the scores (of the group with
        ``groupby``): :math:`\theta = \bar s + \mathrm{cut}\,\sigma`. Default 2 (-2 below).

    Percentile and quantile calls make a fixed fraction of each group hits by construction, so
    compare hit *fractions* across conditions with thresholds set on all cells (or on a reference
    condition) rather than within each condition. Cells with a missing (NaN) score, or a missing
    ``groupby`` label, are never hits. A group whose scores are all equal has no z-score threshold
    and no hits in ``"zscore"`` mode.

    Parameters
    ----------
    {doc_adata}
    key
        Column of ``adata.obs`` with the scores (default ``"score"``, the default of
        :func:`scsig.tl.score`).
    mode
        How ``cut`` is read: ``"percentile"``, ``"quantile"``, ``"value"`` or ``"zscore"``.
    cut
        The threshold in ``mode``'s units; ``None`` takes the mode's default (above).
    above
        Hits are cells at or above the threshold; ``False``: at or below it.
    groupby
        Column of ``adata.obs``: set the threshold within each of its groups.
    key_added
        Column to write; default ``f"{{key}}_hit"``.
    {doc_mod}
    {doc_copy}

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    ``adata.obs[key_added]``
        Boolean: the cell is a hit.
    ``adata.uns["scsig"]["hits"][key_added]``
        The parameters (``key``, ``mode``, ``cut``, ``above``, ``groupby``), the thresholds on
        the score scale per group (``"all"`` without ``groupby``), and the numbers of hits.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, progress=False)
    >>> sg.tl.score(adata, ["g0", "g1", "g2"])
    >>> sg.tl.hits(adata, "score", mode="percentile", cut=90)
    >>> int(adata.obs["score_hit"].sum())
    6
    """
    check_choice("mode", mode, Mode)
    if cut is None:
        if mode == "value":
            msg = "mode='value' needs cut=, the score threshold (it has no default)."
            raise ValueError(msg)
        cut = _DEFAULT_CUT[(mode, bool(above))]
    cut = float(cut)
    if not np.isfinite(cut):
        msg = f"cut must be a finite number, got {cut!r}."
        raise ValueError(msg)
    if mode == "percentile" and not 0 <= cut <= 100:
        msg = (
            f"With mode='percentile', cut is a percentile in [0, 100]; got {cut:g}. For a fraction use mode='quantile'."
        )
        raise ValueError(msg)
    if mode == "percentile" and 0 < cut <= 1:
        share = 100 - cut if above else cut
        warnings.warn(
            f"cut={cut:g} with mode='percentile' is the {cut:g}th percentile, so about {share:.4g} % of cells are "
            f"hits. If you meant the fraction {cut:g}, pass mode='quantile' (or cut={100 * cut:g}).",
            UserWarning,
            stacklevel=2,
        )
    if mode == "quantile" and not 0 <= cut <= 1:
        msg = f"With mode='quantile', cut is a quantile in [0, 1]; got {cut:g}. For percentiles use mode='percentile'."
        raise ValueError(msg)

    _, data_ro = resolve_adata(adata, mod=mod, read_only=True)
    if key not in data_ro.obs.columns:
        msg = f"Score column {key!r} not in adata.obs. Run sg.tl.score first or pass key= one of {list(data_ro.obs.columns)[:10]}."
        raise KeyError(msg)
    if data_ro.n_obs == 0:
        msg = "adata has no cells; select at least one cell before calling hits."
        raise ValueError(msg)
    scores = pd.to_numeric(data_ro.obs[key], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(scores).all():
        msg = f"adata.obs[{key!r}] holds no numeric scores."
        raise ValueError(msg)
    if groupby is not None and groupby not in data_ro.obs.columns:
        msg = f"groupby={groupby!r} is not a column of adata.obs (columns: {list(data_ro.obs.columns)[:10]})."
        raise KeyError(msg)

    key_added = key_added or f"{key}_hit"
    if key_added == key:
        msg = f"key_added={key_added!r} would overwrite the scores it is computed from; choose another name."
        raise ValueError(msg)
    start = logg.info(f"calling hits on {key!r} ({mode}, cut={cut:g}, {'above' if above else 'below'})")
    is_hit = np.zeros(scores.size, dtype=bool)
    thresholds: dict[str, float] = {}
    counts: dict[str, int] = {}
    if groupby is None:
        groups = {"all": np.arange(scores.size)}
    else:
        labels = data_ro.obs[groupby]
        codes = pd.Categorical(labels)
        groups = {str(c): np.flatnonzero(codes.codes == i) for i, c in enumerate(codes.categories)}
        n_missing = int((codes.codes < 0).sum())
        if n_missing:
            warnings.warn(f"{n_missing} cells have no {groupby!r} label; they are not hits.", UserWarning, stacklevel=2)
    for name, idx in groups.items():
        s = scores[idx]
        theta, _, _ = _threshold(s, mode, cut)
        thresholds[name] = theta
        if np.isfinite(theta):
            with np.errstate(invalid="ignore"):
                is_hit[idx] = (s >= theta) if above else (s <= theta)
        counts[name] = int(is_hit[idx].sum())

    container, data = resolve_adata(adata, mod=mod, copy=copy)
    data.obs[key_added] = is_hit
    record = {
        "key": key,
        "mode": mode,
        "cut": cut,
        "above": bool(above),
        "groupby": groupby if groupby is not None else "none",
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "n_hits": counts,
        "n_hits_total": int(is_hit.sum()),
        "n_cells": int(scores.size),
    }
    data.uns.setdefault(UNS_KEY, {}).setdefault("hits", {})[key_added] = record
    logg.info(f"    finished: {int(is_hit.sum())} hits; added obs[{key_added!r}]", time=start)
    return wrap_return(container, copy=copy)
