"""``sg.tl.hits``: call the cells whose signature score passes a threshold."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._constants import SCORE_KEY
from .._docs import doc_adata, doc_copy, doc_mod, doc_params
from .._uns import check_key_added, put_record, score_columns
from .._utils import check_choice, check_number, literal_values, resolve_adata, wrap_return
from .._utils._warn import user_stacklevel

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


def _reference_mask(obs: pd.DataFrame, reference: Any) -> tuple[np.ndarray, str, list[str]]:
    """(mask of reference cells, description for uns, obs columns read) from ``reference=``."""
    n = len(obs)
    if isinstance(reference, Mapping):
        if not reference:
            msg = "reference= is an empty dict; give {column: level}, e.g. {'condition': 'ctrl'}."
            raise ValueError(msg)
        mask = np.ones(n, dtype=bool)
        parts = []
        for col, levels in reference.items():
            if col not in obs.columns:
                msg = f"reference column {col!r} is not a column of adata.obs (columns: {list(obs.columns)[:10]})."
                raise KeyError(msg)
            wanted = [levels] if isinstance(levels, str) or not np.iterable(levels) else list(levels)
            values = obs[col]
            present = set(values.dropna().astype(str).unique())
            unknown = sorted({str(v) for v in wanted} - present)
            if unknown:
                msg = f"reference level(s) {unknown} not found in adata.obs[{col!r}] (levels: {sorted(present)[:10]})."
                raise ValueError(msg)
            mask &= values.astype(str).isin({str(v) for v in wanted}).to_numpy() & values.notna().to_numpy()
            parts.append(f"{col} in {sorted({str(v) for v in wanted})}")
        return mask, " and ".join(parts), [str(c) for c in reference]
    if (
        isinstance(reference, pd.Series)
        and not isinstance(reference.index, pd.RangeIndex)
        and not reference.index.equals(obs.index)
    ):
        msg = "reference= is a Series whose index is not adata.obs_names; pass a mask aligned with the cells."
        raise ValueError(msg)
    mask = np.asarray(reference)
    if mask.dtype != bool or mask.shape != (n,):
        msg = (
            f"reference= must be a boolean mask over the {n} cells or a dict {{column: level}}, got "
            f"{type(reference).__name__} of dtype {getattr(mask, 'dtype', None)} and shape {getattr(mask, 'shape', None)}."
        )
        raise TypeError(msg)
    return mask.copy(), f"mask of {int(mask.sum())} cells", []


def _tie_message(ties: list[tuple[str, int, int, float]], *, above: bool) -> str:
    end = "lowest" if above else "highest"
    where = "; ".join(f"{g}: {k} of {n} cells at {v:g}" for g, k, n, v in ties[:5])
    more = f" (and {len(ties) - 5} more groups)" if len(ties) > 5 else ""
    return (
        f"The hit threshold ties with the {end} score ({where}{more}). Cells at the {end} score (often 0: no counts "
        "of the signature's genes) are never hits, so fewer cells are hits than the cut asks for. Use a signature of "
        "more widely detected genes, a more extreme cut, or mode='value' with an explicit threshold."
    )


def _check_hits_args(mode: str, cut: float | None, *, above: bool) -> float:
    """Check ``mode`` and ``cut``; the cut as a float (the mode's default when ``None``)."""
    check_choice("mode", mode, Mode)
    if cut is None:
        if mode == "value":
            msg = "mode='value' needs cut=, the score threshold (it has no default)."
            raise ValueError(msg)
        cut = _DEFAULT_CUT[(mode, bool(above))]
    cut = float(check_number("cut", cut))
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
            stacklevel=user_stacklevel(),
        )
    if mode == "quantile" and not 0 <= cut <= 1:
        msg = f"With mode='quantile', cut is a quantile in [0, 1]; got {cut:g}. For percentiles use mode='percentile'."
        raise ValueError(msg)
    return cut


def _hit_scores(data: Any, key: str, groupby: str | None) -> np.ndarray:
    """The numeric scores of ``adata.obs[key]``, after checking the score and ``groupby`` columns."""
    if key not in data.obs.columns:
        scores = score_columns(data)
        others = [c for c in data.obs.columns if c not in scores and pd.api.types.is_numeric_dtype(data.obs[c])]
        msg = (
            f"Score column {key!r} not in adata.obs. Run sg.tl.score first or pass key= one of its columns "
            f"({scores[:10] if scores else 'none recorded'}; other numeric columns: {others[:10]})."
        )
        raise KeyError(msg)
    if data.n_obs == 0:
        msg = "adata has no cells; select at least one cell before calling hits."
        raise ValueError(msg)
    scores = pd.to_numeric(data.obs[key], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(scores).all():
        msg = f"adata.obs[{key!r}] holds no numeric scores."
        raise ValueError(msg)
    if groupby is not None and groupby not in data.obs.columns:
        msg = f"groupby={groupby!r} is not a column of adata.obs (columns: {list(data.obs.columns)[:10]})."
        raise KeyError(msg)
    return scores


def _hit_reference(obs: pd.DataFrame, reference: Any) -> tuple[np.ndarray, str, list[str]]:
    """The reference cells (all when ``reference`` is ``None``), their description and the columns read."""
    if reference is None:
        return np.ones(len(obs), dtype=bool), "all cells", []
    ref_mask, ref_desc, ref_cols = _reference_mask(obs, reference)
    if not ref_mask.any():
        msg = f"reference= selects no cells ({ref_desc}); the thresholds need reference cells."
        raise ValueError(msg)
    return ref_mask, ref_desc, ref_cols


def _hit_groups(obs: pd.DataFrame, groupby: str | None, n_obs: int) -> dict[str, np.ndarray]:
    """The cell indices of each group (one group ``"all"`` without ``groupby``); warns about unlabelled cells."""
    if groupby is None:
        return {"all": np.arange(n_obs)}
    codes = pd.Categorical(obs[groupby])
    groups = {str(c): np.flatnonzero(codes.codes == i) for i, c in enumerate(codes.categories)}
    n_missing = int((codes.codes < 0).sum())
    if n_missing:
        warnings.warn(
            f"{n_missing} cells have no {groupby!r} label; they are not hits.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return groups


def _call_hits(
    scores: np.ndarray,
    groups: dict[str, np.ndarray],
    ref_mask: np.ndarray,
    *,
    mode: str,
    cut: float,
    above: bool,
    groupby: str | None,
) -> tuple[np.ndarray, dict[str, list]]:
    """The hit mask and the per-group table; warns about ties at the extreme and groups without reference cells."""
    is_hit = np.zeros(scores.size, dtype=bool)
    table: dict[str, list] = {k: [] for k in ("groups", "thresholds", "floors", "n_reference", "n_cells", "n_hits")}
    ties, no_reference = [], []
    for name, idx in groups.items():
        s = scores[idx]
        ref = s[ref_mask[idx] & np.isfinite(s)]
        theta, _, _ = _threshold(ref, mode, cut)
        floor = (ref.min() if above else ref.max()) if ref.size else np.nan
        if ref.size == 0:
            no_reference.append(name)
        if np.isfinite(theta) and np.isfinite(floor):
            with np.errstate(invalid="ignore"):
                is_hit[idx] = ((s >= theta) & (s > floor)) if above else ((s <= theta) & (s < floor))
            if (theta <= floor) if above else (theta >= floor):
                ties.append((name, int((ref == floor).sum()), int(ref.size), float(floor)))
        for k, v in zip(
            table, (name, float(theta), float(floor), int(ref.size), int(idx.size), int(is_hit[idx].sum())), strict=True
        ):
            table[k].append(v)
    if ties:
        warnings.warn(_tie_message(ties, above=above), UserWarning, stacklevel=user_stacklevel())
    if no_reference:
        warnings.warn(
            f"{len(no_reference)} group(s) of {groupby!r} have no reference cells ({no_reference[:5]}); they have no "
            "threshold and no hits.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return is_hit, table


@doc_params(doc_adata=doc_adata, doc_copy=doc_copy, doc_mod=doc_mod)
def hits(
    adata: Any,
    key: str = SCORE_KEY,
    *,
    mode: Mode = "percentile",
    cut: float | None = None,
    above: bool = True,
    groupby: str | None = None,
    reference: Mapping[str, Any] | Any | None = None,
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

    With ``reference`` (e.g. ``{{"condition": "ctrl"}}``, or a boolean mask over the cells) the
    threshold is set on the reference cells only (within each group with ``groupby``) and applied
    to every cell: the usual way to call hits, defined on control cells and then counted in every
    condition. Percentile and quantile calls without a reference make a fixed fraction of each
    group hits by construction, so to compare hit *fractions* across conditions set the threshold
    on a reference condition (or on all cells) rather than within each condition.

    A cell whose score is at the lowest score of the cells the threshold is set on (often 0: none
    of the signature's genes has counts) is never a hit (with ``above=False``: at the highest).
    Scores of rare genes are mostly 0, so a percentile can fall on that minimum; the call then
    warns how many cells tie there and what to do. Cells with a missing (NaN) score, or a missing
    ``groupby`` label, are never hits. A group whose scores are all equal has no z-score threshold
    and no hits in ``"zscore"`` mode; a group without reference cells has no threshold and no hits.

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
    reference
        Cells to set the threshold on: a dict ``{{column: level}}`` (a level or a list of levels;
        several columns must all match) or a boolean mask over the cells. ``None``: all cells.
    key_added
        Column to write; default ``f"{{key}}_hit"``. It must not be a column the call reads
        (``key``, ``groupby``, ``reference``'s columns); replacing a column scsig did not write warns.
    {doc_mod}
    {doc_copy}

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``, with

    ``adata.obs[key_added]``
        Boolean: the cell is a hit.
    ``adata.uns["scsig"]["hits"][key_added]``
        The parameters (``key``, ``mode``, ``cut``, ``above``, ``groupby``, ``reference``) and,
        as parallel lists over the groups (``"all"`` without ``groupby``), ``groups``,
        ``thresholds`` (on the score scale), ``floors`` (the lowest reference score, never a hit),
        ``n_reference``, ``n_cells`` and ``n_hits``.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> sg.tl.score(adata, ["g0", "g1", "g2"])
    >>> sg.tl.hits(adata, "score", mode="percentile", cut=90)
    >>> int(adata.obs["score_hit"].sum())
    6

    Thresholds set on the cells of group ``"a"`` (say, the controls), then counted in every cell:

    >>> sg.tl.hits(adata, "score", reference={{"group": "a"}}, key_added="score_hit_ref")
    """
    cut = _check_hits_args(mode, cut, above=above)
    _, data_ro = resolve_adata(adata, mod=mod, read_only=True)
    scores = _hit_scores(data_ro, key, groupby)
    key_added = key_added or f"{key}_hit"
    if key_added == key:
        msg = f"key_added={key_added!r} would overwrite the scores it is computed from; choose another name."
        raise ValueError(msg)
    ref_mask, ref_desc, ref_cols = _hit_reference(data_ro.obs, reference)
    reads = {key: "the scores"} | ({groupby: "groupby"} if groupby is not None else {})
    reads |= dict.fromkeys(ref_cols, "a reference column")
    check_key_added(data_ro, [key_added], reads=reads)
    start = logg.info(f"calling hits on {key!r} ({mode}, cut={cut:g}, {'above' if above else 'below'})")
    groups = _hit_groups(data_ro.obs, groupby, scores.size)
    is_hit, table = _call_hits(scores, groups, ref_mask, mode=mode, cut=cut, above=above, groupby=groupby)

    container, data = resolve_adata(adata, mod=mod, copy=copy)
    data.obs[key_added] = is_hit
    record = {
        "key": key,
        "mode": mode,
        "cut": cut,
        "above": bool(above),
        "groupby": groupby if groupby is not None else "none",
        "reference": ref_desc,
        "columns": [key_added],
        **table,
        "n_hits_total": int(is_hit.sum()),
        "n_cells_total": int(scores.size),
    }
    put_record(data, "hits", key_added, record)
    logg.info(f"    finished: {int(is_hit.sum())} hits; added obs[{key_added!r}]", time=start)
    return wrap_return(container, copy=copy)
