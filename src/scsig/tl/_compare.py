"""``sg.tl.compare_scores``: attribution scores against expression scores on the user's own data."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _logging as logg
from .._constants import IN_MODEL_SUFFIX, UNS_KEY
from .._docs import doc_mod, doc_params
from .._signature import parse_signatures, resolve_signatures
from .._uns import check_key_added, put_record
from .._utils import check_installed, get_matrix, resolve_adata, to_memory
from .._utils._warn import user_stacklevel
from ..pp._validate import check_counts as _check_counts
from ..pp._validate import check_unique_var_names
from ._score import attribution_layer, score_signature
from ._score_modes import DEFAULT_MODE, ScoreMode, check_mode

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SCORERS", "compare_scores"]

SCORERS = {
    "attribution": None,
    "score_genes": None,
    "ucell": "pyucell",
    "aucell": "decoupler",
}
"""Scoring methods and the optional package each needs."""


def _auroc(values: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``values`` for ``positive`` (ties count half), NaN if a class is empty."""
    from scipy.stats import rankdata

    if np.isnan(values).any():
        return float("nan")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(values)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _abs_spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 3 or np.isnan(a).any() or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(abs(spearmanr(a, b).statistic))


def _expression_scores(
    counts: np.ndarray | sparse.spmatrix,
    obs_names: pd.Index,
    var_names: pd.Index,
    genes: list[str],
    method: str,
    *,
    seed: int,
) -> np.ndarray:
    """One expression-based score per cell, on a private AnnData (the user's is never touched)."""
    import scanpy as sc

    work = AnnData(
        X=sparse.csr_matrix(counts, dtype=np.float32),
        obs=pd.DataFrame(index=obs_names.astype(str)),
        var=pd.DataFrame(index=var_names.astype(str)),
    )
    present = [g for g in genes if g in work.var_names]
    if method == "score_genes":
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
        # scanpy's defaults (25 expression bins, 50 control genes each) need a genome-sized gene universe
        n_other = max(1, work.n_vars - len(present))
        sc.tl.score_genes(
            work,
            present,
            random_state=seed,
            score_name="_s",
            n_bins=min(25, max(1, n_other // 10)),
            ctrl_size=min(50, n_other),
        )
        return work.obs["_s"].to_numpy(np.float64)
    if method == "ucell":
        import pyucell

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyucell.compute_ucell_scores(work, {"sig": present}, n_jobs=1)
        col = next(c for c in work.obs.columns if c.startswith("sig"))
        return work.obs[col].to_numpy(np.float64)
    if method == "aucell":
        import decoupler as dc

        net = pd.DataFrame({"source": "sig", "target": present, "weight": 1.0})
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dc.mt.aucell(work, net, tmin=1, verbose=False)
        return work.obsm["score_aucell"]["sig"].to_numpy(np.float64)
    msg = f"Unknown scoring method {method!r}; use some of {list(SCORERS)}."
    raise ValueError(msg)


def _label_set(value: Any, labels: pd.Series, side: str, contrast: str) -> set[str]:
    """The labels of one side of the contrast as strings, each checked to occur in ``labels``."""
    values = [value] if isinstance(value, str) or not isinstance(value, Iterable) else list(value)
    out = {str(v) for v in values}
    present = set(labels.dropna().unique())
    unknown = out - present
    if unknown or not out:
        msg = (
            f"{side} label(s) {sorted(unknown)} not found in adata.obs[{contrast!r}] (labels: {sorted(present)[:10]})."
        )
        raise ValueError(msg)
    return out


def _gene_list(genes: Any, var_names: pd.Index) -> list[str]:
    """The signature as a list of unique gene names, at least one of them in ``var_names``."""
    if isinstance(genes, Mapping) and len(genes) > 0 and not all(isinstance(v, Real) for v in genes.values()):
        msg = "compare_scores compares one signature; pass one gene list (not a dict name -> genes)."
        raise TypeError(msg)
    sigs, _ = parse_signatures(genes)
    ((gene_list, weights),) = sigs.values()
    if weights is not None:
        msg = "compare_scores takes an unweighted gene list (the expression scores have no weights)."
        raise TypeError(msg)
    resolve_signatures(gene_list, index=var_names, where="adata.var_names", missing_text="not in adata.var_names")
    return gene_list


def _check_compare_scores_args(data: AnnData, genes: Any, *, contrast: str, groupby: str | None) -> list[str]:
    """Check the obs columns and the var names; the signature as a list of gene names."""
    if contrast not in data.obs:
        msg = f"contrast={contrast!r} is not a column of adata.obs (columns: {list(data.obs.columns)})."
        raise KeyError(msg)
    if groupby is not None and groupby not in data.obs:
        msg = f"groupby={groupby!r} is not a column of adata.obs."
        raise KeyError(msg)
    check_unique_var_names(data.var_names)
    return _gene_list(genes, data.var_names)


def _contrast_sides(
    data: AnnData, contrast: str, positive: Any, negative: Any
) -> tuple[pd.Series, set[str], np.ndarray, np.ndarray]:
    """The contrast labels (NaN where unlabeled), the positive label set and the positive/negative cell masks."""
    unlabeled = data.obs[contrast].isna().to_numpy()  # on neither side
    labels = data.obs[contrast].astype(str).where(~unlabeled)
    pos_set = _label_set(positive, labels, "positive", contrast)
    is_pos = labels.isin(pos_set).to_numpy()
    if negative is None:
        is_neg = ~is_pos & ~unlabeled
    else:
        neg_set = _label_set(negative, labels, "negative", contrast)
        both = sorted(pos_set & neg_set)
        if both:
            msg = f"Label(s) {both} of adata.obs[{contrast!r}] are both positive and negative; give each to one side."
            raise ValueError(msg)
        is_neg = labels.isin(neg_set).to_numpy()
    if not is_neg.any():
        msg = (
            f"No negative cells: every cell of adata.obs[{contrast!r}] is positive ({sorted(pos_set)}). The contrast "
            "needs cells of another label (pass negative= or a column with at least two labels)."
        )
        raise ValueError(msg)
    return labels, pos_set, is_pos, is_neg


def _resolve_methods(methods: Sequence[str] | str | None) -> list[str]:
    """The methods to run (``None``: every one whose package is installed), each known and installed."""
    if methods is None:
        methods = [m for m, pkg in SCORERS.items() if pkg is None or importlib.util.find_spec(pkg) is not None]
    elif isinstance(methods, str):
        methods = [methods]
    for m in methods:
        if m not in SCORERS:
            msg = f"Unknown scoring method {m!r}; use some of {list(SCORERS)}."
            raise ValueError(msg)
        pkg = SCORERS[m]
        if pkg is not None:
            check_installed(pkg, purpose=f"method {m!r}", extra="compare")
    return list(methods)


def _score_method(
    data: AnnData, method: str, genes: list[str], counts: Any, *, layer: str | None, seed: int, mode: str
) -> np.ndarray:
    """One method's score per cell; the attribution score is NaN (with a warning) if no gene is known to the model."""
    if method != "attribution":
        return _expression_scores(counts, data.obs_names, data.var_names, list(genes), method, seed=seed)
    key = attribution_layer(data, layer)
    in_model = f"{key}{IN_MODEL_SUFFIX}"
    known = data.var[in_model].to_numpy(bool) if in_model in data.var else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # genes not in var were reported above
            (sig,), _ = resolve_signatures(genes, index=pd.Index(data.var_names), known=known)
    except ValueError as err:  # no signature gene is known to the model
        warnings.warn(f"attribution score not computed: {err}", UserWarning, stacklevel=user_stacklevel())
        return np.full(data.n_obs, np.nan)
    values, _ = score_signature(data.layers[key], sig, mode=mode, pool=known)
    return values


def _compare_table(
    data: AnnData,
    results: dict[str, np.ndarray],
    labels: pd.Series,
    is_pos: np.ndarray,
    is_neg: np.ndarray,
    totals: np.ndarray,
    *,
    groupby: str | None,
    min_cells: int,
) -> pd.DataFrame:
    """AUROC and depth correlation of each method, pooled (group ``"all"``) and within each ``groupby`` group."""
    keep = is_pos | is_neg
    groups: list[tuple[str, np.ndarray]] = [("all", keep)]
    if groupby is not None:
        for g in data.obs[groupby].dropna().astype(str).unique():
            groups.append((g, keep & (data.obs[groupby].astype(str) == g).to_numpy()))
    level_masks = [(labels == lv).to_numpy() for lv in labels[keep].unique()]

    rows = []
    for m, values in results.items():
        within = []
        for name, mask in groups:
            n_p, n_n = int((mask & is_pos).sum()), int((mask & is_neg).sum())
            auc = _auroc(values[mask], is_pos[mask]) if min(n_p, n_n) >= min_cells else float("nan")
            rhos = [
                _abs_spearman(values[mask & lv], totals[mask & lv])
                for lv in level_masks
                if (mask & lv).sum() >= min_cells
            ]
            rho = float(np.nanmean(rhos)) if rhos and not np.all(np.isnan(rhos)) else float("nan")
            if name != "all":
                within.append(rho)
            rows.append(
                {"method": m, "group": name, "auroc": auc, "depth_rho": rho, "n_positive": n_p, "n_negative": n_n}
            )
        if groupby is not None and within and not np.all(np.isnan(within)):
            rows[-len(groups)]["depth_rho"] = float(np.nanmean(within))
    return pd.DataFrame(rows)


@doc_params(doc_mod=doc_mod)
def compare_scores(
    adata: Any,
    genes: Sequence[str],
    *,
    contrast: str,
    positive: str | Sequence[str],
    negative: str | Sequence[str] | None = None,
    groupby: str | None = None,
    methods: Sequence[str] | None = None,
    layer: str | None = None,
    mode: ScoreMode = DEFAULT_MODE,
    counts_layer: str | None = None,
    min_cells: int = 10,
    seed: int = 0,
    check_counts: bool = True,
    key_added: str = "compare",
    mod: str = "rna",
) -> pd.DataFrame:
    """Compare the attribution score with expression scores for a signature and a labelled contrast.

    Every method scores the same cells for ``genes``: ``"attribution"`` is :func:`scsig.tl.score`
    on the attribution layer, in ``mode`` (its default, ``"cosine"``, as :func:`scsig.tl.score`); ``"score_genes"`` is :func:`scanpy.tl.score_genes` on log1p(CP10k)
    expression; ``"ucell"`` (pyucell) and ``"aucell"`` (decoupler) are rank-based scores, run when
    those packages are installed (``pip install 'scsig[compare]'``).

    For each method it reports, pooled and within each ``groupby`` group:

    ``auroc``
        Area under the ROC curve separating ``positive`` from ``negative`` cells of ``contrast``
        by the score (0.5 = chance, 1 = perfect).
    ``depth_rho``
        The absolute Spearman correlation of the score with the cell's total counts, computed
        within each contrast level (so the biology of the contrast does not count as a depth effect)
        and averaged over the levels. Lower means less confounded by sequencing depth. The pooled
        row averages the within-group values when ``groupby`` is given.

    Parameters
    ----------
    adata
        Annotated data with raw counts (``counts_layer`` or ``X``) and an attribution layer from
        :func:`scsig.tl.attribute`.
    genes
        The signature: a list of gene names.
    contrast
        Column of ``adata.obs`` holding the labels to separate.
    positive
        Label(s) of ``contrast`` counted as positive.
    negative
        Label(s) counted as negative; ``None`` takes every other cell. Cells without a ``contrast``
        label (NaN) are on neither side.
    groupby
        Column of ``adata.obs`` (e.g. cell type) to report within as well as pooled; cells without
        a label count in the pooled row only.
    methods
        Methods to compare; ``None`` takes every one whose package is installed.
    layer
        Attribution layer; ``None`` takes the only one recorded.
    mode
        Scoring mode of the attribution score, as in :func:`scsig.tl.score` (default ``"cosine"``;
        ``"classic"`` is the published method's score). Modes with options take their defaults.

        Since the development versions after 0.1.0 the attribution score follows
        :func:`scsig.tl.score`'s default, ``"cosine"`` (it was ``"classic"``).
    counts_layer
        Layer with raw counts for the expression scores and totals; ``None`` reads ``X``.
    min_cells
        Groups with fewer positive or negative cells than this are reported with NaN AUROC.
    seed
        Seed of :func:`scanpy.tl.score_genes`' control genes.
    check_counts
        Refuse a counts matrix that is not raw counts (negative, NaN/inf or non-integer values): the
        expression scores normalize it and ``depth_rho`` reads its totals.
    key_added
        The scores are written to ``adata.obs[f"{{key_added}}_{{method}}"]``.
    {doc_mod}

    Returns
    -------
    A tidy DataFrame with columns ``method``, ``group`` (``"all"`` for pooled), ``auroc``,
    ``depth_rho``, ``n_positive``, ``n_negative``. It is also stored in
    ``adata.uns["scsig"]["compare"][key_added]`` (as a dict of columns), and each method's score in
    ``adata.obs[f"{{key_added}}_{{method}}"]``.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> res = sg.tl.compare_scores(
    ...     adata, ["g0", "g1", "g2", "g3", "g4"], contrast="group", positive="b", methods=["attribution", "score_genes"]
    ... )
    >>> sorted(res["method"].unique())
    ['attribution', 'score_genes']
    """
    check_mode(mode, None)
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    genes = _check_compare_scores_args(data, genes, contrast=contrast, groupby=groupby)
    labels, pos_set, is_pos, is_neg = _contrast_sides(data, contrast, positive, negative)
    keep = is_pos | is_neg
    methods = _resolve_methods(methods)
    reads = {contrast: "contrast"} | ({groupby: "groupby"} if groupby is not None else {})
    check_key_added(data, [f"{key_added}_{m}" for m in methods], reads=reads)
    counts = to_memory(get_matrix(data, counts_layer))
    if check_counts:
        _check_counts(
            counts, where="adata.X (counts_layer=None)" if counts_layer is None else f"adata.layers[{counts_layer!r}]"
        )
    totals = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    start = logg.info(f"comparing {len(methods)} scoring methods on {int(keep.sum())} cells")
    results: dict[str, np.ndarray] = {}
    for m in methods:
        results[m] = _score_method(data, m, genes, counts, layer=layer, seed=seed, mode=mode)
    table = _compare_table(data, results, labels, is_pos, is_neg, totals, groupby=groupby, min_cells=min_cells)
    _, data = resolve_adata(adata, mod=mod)
    for m, values in results.items():
        data.obs[f"{key_added}_{m}"] = values
    put_record(
        data,
        "compare",
        key_added,
        {
            "table": {c: table[c].tolist() for c in table.columns},
            "genes": list(map(str, genes)),
            "contrast": contrast,
            "positive": sorted(pos_set),
            "groupby": groupby if groupby is not None else "none",
            "mode": mode,
            "columns": [f"{key_added}_{m}" for m in results],
        },
    )
    logg.info(f"    finished: added obs['{key_added}_<method>'] for {list(results)}", time=start)
    table.attrs[UNS_KEY] = {"contrast": contrast, "positive": sorted(map(str, pos_set)), "mode": mode}
    return table
