"""``sg.tl.score``: signature scores from an attribution layer."""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _logging as logg
from .._constants import IN_MODEL_SUFFIX, SCORE_KEY, UNS_KEY
from .._docs import doc_adata, doc_copy, doc_mod, doc_params
from .._signature import Aggregate, Signature, parse_signatures, resolve_signatures
from .._uns import check_key_added, encode_key, put_record
from .._utils import resolve_adata, wrap_return
from .._utils._warn import user_stacklevel
from ..pp._validate import check_unique_var_names
from ._score_modes import DEFAULT_MODE, DEFAULT_TOP_K, ScoreMode, check_mode, mode_scores, top_k_problem

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

__all__ = ["attribution_layer", "parse_signatures", "score", "score_matrix", "score_signature"]


def attribution_layer(adata: AnnData, layer: str | None) -> str:
    """The attribution layer to read: ``layer``, or the only one recorded in ``adata.uns["scsig"]``."""
    if layer is not None:
        if layer not in adata.layers:
            msg = f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)}). Run sg.tl.attribute first."
            raise KeyError(msg)
        if layer not in adata.uns.get(UNS_KEY, {}).get("layers", {}):
            warnings.warn(
                f"Layer {layer!r} has no record in adata.uns['scsig']['layers'], so it was not written by "
                "sg.tl.attribute (or its record was dropped); its values are used as attributions as they are. "
                "If it holds counts or expression, run sg.tl.attribute and pass the layer it writes.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        return layer
    recorded = [k for k in adata.uns.get(UNS_KEY, {}).get("layers", {}) if k in adata.layers]
    if len(recorded) == 1:
        return recorded[0]
    if not recorded:
        msg = "No attribution layer found (adata.uns['scsig']['layers'] is empty). Run sg.tl.attribute first, or pass layer=."
        raise KeyError(msg)
    msg = f"Several attribution layers are present ({recorded}); pass layer= one of them."
    raise ValueError(msg)


@functools.cache
def _csr_kernel():
    """A compiled CSR kernel: per row, sum of weight[col] * value over the stored entries with a weight."""
    import numba

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(indptr, indices, data, lookup, out):  # pragma: no cover - compiled
        for i in numba.prange(out.shape[0]):
            acc = 0.0
            for j in range(indptr[i], indptr[i + 1]):
                w = lookup[indices[j]]
                if w != 0.0:
                    acc += w * data[j]
            out[i] = acc

    return kernel


def _csr_weighted_rowsum(x: sparse.csr_matrix, lookup: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float64)
    _csr_kernel()(x.indptr, x.indices, x.data, lookup, out)
    return out


def _check_signature_names(names: list[str]) -> None:
    """Signature names become ``obs`` and ``obsm`` column names that h5ad and zarr must store."""
    bad = [n for n in names if n in ("", ".")]
    if bad:
        msg = (
            f"Signature names {bad} cannot be stored in an h5ad file (an empty name or '.' names no column); "
            "give the signatures visible names, e.g. {'IFN': [...]}."
        )
        raise ValueError(msg)


def _check_layer(x: Any, key: str) -> None:
    """An in-memory attribution layer has cells, finite values and (CSR) one entry per gene and cell."""
    if x.shape[0] == 0:
        msg = "adata has no cells; subset it to at least one cell before scoring."
        raise ValueError(msg)
    if not (sparse.issparse(x) or isinstance(x, np.ndarray)):
        return  # backed or dask layers are read in blocks by the scoring code
    values = x.data if sparse.issparse(x) else x
    if not np.isfinite(values.sum(dtype=np.float64)):  # one pass, no copy; NaN and inf survive the sum
        finite = np.isfinite(values)
        msg = (
            f"Layer {key!r} holds {int((~finite).sum())} NaN or infinite values: attributions are finite, so the layer "
            "is damaged or was edited. Recompute it with sg.tl.attribute, or drop the affected cells."
        )
        raise ValueError(msg)
    if sparse.issparse(x) and x.format == "csr" and not x.has_canonical_format:
        x_sorted = x.copy()
        x_sorted.sum_duplicates()
        if x_sorted.nnz != x.nnz:
            msg = (
                f"Layer {key!r} stores some (cell, gene) entries more than once ({x.nnz - x_sorted.nnz} duplicates), so "
                f"scores would count them twice. Merge them first: adata.layers[{key!r}].sum_duplicates()."
            )
            raise ValueError(msg)


def score_matrix(x: np.ndarray | sparse.spmatrix, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``x[:, cols] @ weights`` in float64 without densifying ``x``.

    CSR layers are read in one compiled pass that touches the values of the signature's genes only;
    CSC layers and dense arrays are sliced to the signature's columns first.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if sparse.issparse(x) and x.format == "csr":
        lookup = np.zeros(x.shape[1], dtype=np.float64)
        lookup[cols] = weights
        return _csr_weighted_rowsum(x, lookup)
    if sparse.issparse(x):
        sub = sparse.csc_matrix(x)[:, cols]
        return np.asarray(sub @ weights, dtype=np.float64).ravel()
    return np.asarray(x[:, cols], dtype=np.float64) @ weights


def score_signature(
    x: np.ndarray | sparse.spmatrix, sig: Signature, *, mode: str, **mode_kwds: Any
) -> tuple[np.ndarray, dict]:
    """The scores of one resolved signature on the attribution matrix ``x`` (cells x genes), and the mode's options.

    The one place a signature's score is computed from attributions. ``"classic"`` is the
    coefficient-weighted sum of its genes' attributions (coefficients sum to 1 for
    ``aggregate="mean"``); the other modes are in :mod:`scsig.tl._score_modes`. ``mode`` has no
    default: each caller says which mode it computes (see :data:`DEFAULT_MODE`). ``mode_kwds`` go to
    :func:`~scsig.tl._score_modes.mode_scores` (``pool``, ``cache``, the mode's own options).
    """
    return mode_scores(x, sig.cols, sig.coef, mode=mode, score_matrix=score_matrix, **mode_kwds)


@doc_params(doc_adata=doc_adata, doc_mod=doc_mod, doc_copy=doc_copy)
def score(
    adata: Any,
    genes: Sequence[str] | Mapping[str, float] | Mapping[str, Sequence[str] | Mapping[str, float]],
    *,
    layer: str | None = None,
    weights: Sequence[float] | None = None,
    aggregate: Aggregate = "mean",
    mode: ScoreMode = DEFAULT_MODE,
    mode_kwds: Mapping[str, Any] | None = None,
    key_added: str = SCORE_KEY,
    mod: str = "rna",
    copy: bool = False,
) -> Any:
    r"""Score cells for a gene signature from an attribution layer.

    The classic score of a cell (``mode="classic"``, what the published SIGnature method and its
    reference package compute) is the mean (``aggregate="mean"``) or sum (``"sum"``) of its
    normalized attributions over the signature's genes; with weights :math:`w_g` the weighted mean
    is :math:`\sum_g w_g a_g / \sum_g w_g` and the weighted sum :math:`\sum_g w_g a_g`. The default,
    ``mode="cosine"``, is the cosine similarity of the cell's attribution vector :math:`a` and the
    signature's weight vector :math:`w` (zero outside the signature):
    :math:`\sum_g w_g a_g / (\lVert a \rVert_2 \lVert w \rVert_2)`, in [0, 1]; 1 when the cell's
    attributions are proportional to the weights.

    Why ``"cosine"`` is the default: every cell's attributions sum to the same total, a deeper cell
    detects more genes and spreads that total over more of them, so the classic score falls with
    sequencing depth inside a pure population. The Euclidean norm is dominated by a cell's largest
    attributions and hardly moves with the many small ones a deeper cell adds. On cells the
    encoders never saw it followed depth within a cell type less than the classic score and
    ``"top"``, at the same marker AUROC, also on data that keep few of the model's genes (see
    :doc:`the validity page </validity>`, ``docs/validity.md``). Pass ``mode="classic"`` to
    reproduce the published method and the reference package (``sc-signature``) exactly.

    With the default ``target_sum=1000`` a classic score is in attribution units per gene: a mean
    of 1 means the signature's genes carry, on average, 1/1000 of the cell's attribution each
    (for ``"top"``, 1/1000 of its 300 largest attributions). ``"cosine"`` is unitless. Scores are
    non-negative (with non-negative weights) and do not depend on the order of the genes.

    Scores are built from shares of a fixed total: every cell's attributions sum to the same 1,000,
    so genes compete for it. A strong program in a cell (e.g. an interferon response) takes a large
    share and thereby lowers that cell's other scores, even when the other genes' expression did not
    change. Compare a signature's scores across cells
    and conditions; read a drop in one signature next to a rise in another with that in mind.

    The default ``mode`` is ``"cosine"`` since the development versions after 0.1.0 (it was
    ``"classic"``). Pass ``mode="classic"`` for the scores of 0.1.0 and of the reference package.

    Genes absent from ``adata.var``, or present but unknown to the layer's model, are left out with
    a warning (and recorded); duplicates, an empty signature, or one with no usable gene are errors.

    Parameters
    ----------
    {doc_adata}
    genes
        A list of genes, a dict gene -> weight (or a numeric :class:`pandas.Series` indexed by gene),
        or a dict name -> list (or gene -> weight dict) to score several signatures at once.
    layer
        Attribution layer; ``None`` takes the only one recorded by :func:`scsig.tl.attribute`.
    weights
        Weights for a gene list, in the same order.
    aggregate
        ``"mean"`` or ``"sum"``.
    mode
        How attributions become a score (see ``docs/validity.md`` for what each does to the depth
        confound). ``"cosine"`` (default): the cosine similarity of the cell's attribution vector
        and the signature's weights, in [0, 1]. Its Euclidean norm is dominated by the cell's
        largest attributions, so a deeper cell, which spreads its attribution over more detected
        genes, is not scored lower for it. ``"classic"``: the mean (or sum) of the normalized
        attributions, what the published method and the reference package compute. ``"top"``: the
        classic score times the cell's attribution total over the sum of its ``top_k`` (300)
        largest attributions; on data that hold few of the model's genes it is the classic score
        (with a warning). ``"rank"``: from each cell's ranking
        of its genes by attribution (1 = largest), a gene of rank :math:`r \le R` counts
        :math:`(R - r + 1) / R` (``max_rank`` :math:`R`, 200), others 0; scores are in [0, 1].
        ``"control_diff"`` / ``"control_ratio"``: as :func:`scanpy.tl.score_genes` on attributions,
        the score minus (divided by) the mean attribution of ``ctrl_size`` (50) control genes drawn
        (with ``seed``, 0) from the signature genes' bins (``n_bins``, 25) of mean attribution.
        ``"detected"``: the classic score times the cell's number of non-zero attributions over its
        attribution total (attribution relative to the cell's mean over its detected genes).
    mode_kwds
        Options of the mode: ``top_k`` (``"top"``), ``max_rank`` (``"rank"``), ``n_bins``,
        ``ctrl_size`` and ``seed`` (``"control_*"``).
    key_added
        Name of the score column. For several signatures the columns are
        ``f"{{key_added}}_{{name}}"`` and ``adata.obsm[key_added]`` holds them all.
    {doc_mod}
    {doc_copy}

    Returns
    -------
    ``None``, or a copy when ``copy=True``, with

    ``adata.obs[key_added]``
        float64 scores (one signature), or ``adata.obs[f"{{key_added}}_{{name}}"]`` and
        ``adata.obsm[key_added]`` (a DataFrame, one column per signature) for several.
    ``adata.uns["scsig"]["scores"][key_added]``
        The layer, aggregate, mode (and its options), and per signature the genes used, their weights and the missing genes.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> sg.tl.score(adata, ["g0", "g1", "g2"])
    >>> bool((adata.obs["score"] >= 0).all())
    True
    >>> adata.uns["scsig"]["scores"]["score"]["mode"]
    'cosine'
    >>> sg.tl.score(adata, ["g0", "g1", "g2"], mode="classic", key_added="score_classic")
    >>> sg.tl.score(adata, ["g0", "g1", "g2"], mode="top", mode_kwds={"top_k": 10}, key_added="score_top10")
    """
    mode_kwds = check_mode(mode, mode_kwds)
    _, data_ro = resolve_adata(adata, mod=mod, read_only=True)
    key = attribution_layer(data_ro, layer)
    var_index = pd.Index(data_ro.var_names)
    check_unique_var_names(var_index)
    in_model_col = f"{key}{IN_MODEL_SUFFIX}"
    known = data_ro.var[in_model_col].to_numpy(bool) if in_model_col in data_ro.var else None
    sigs, several = resolve_signatures(genes, weights, index=var_index, known=known, aggregate=aggregate)
    columns = [f"{key_added}_{sig.name}" for sig in sigs] if several else [key_added]
    if several:
        _check_signature_names([sig.name for sig in sigs])
    check_key_added(data_ro, columns, reads={})
    x = data_ro.layers[key]
    _check_layer(x, key)

    start = logg.info(f"scoring {len(sigs)} signature(s) from layer {key!r}")
    scores: dict[str, np.ndarray] = {}
    used: dict[str, dict] = {}
    mode_cache: dict = {}
    if mode == "top" and (problem := top_k_problem(x, mode_kwds.get("top_k", DEFAULT_TOP_K))):
        warnings.warn(problem, UserWarning, stacklevel=user_stacklevel())
    for sig in sigs:
        scores[sig.name], used[sig.name] = score_signature(x, sig, mode=mode, pool=known, cache=mode_cache, **mode_kwds)
    record: dict[str, Any] = {
        "layer": key,
        "aggregate": aggregate,
        "mode": mode,
        "columns": columns,
        "signatures": {
            encode_key(sig.name): {
                **sig.record(),
                "name": sig.name,
                **({"mode_options": used[sig.name]} if used[sig.name] else {}),
            }
            for sig in sigs
        },
    }

    container, data = resolve_adata(adata, mod=mod, copy=copy)
    if several:
        frame = pd.DataFrame(scores, index=data.obs_names, dtype=np.float64)
        for col, name in zip(columns, scores, strict=True):
            data.obs[col] = frame[name].to_numpy()
        data.obsm[key_added] = frame
    else:
        data.obs[key_added] = scores["signature"]
    put_record(data, "scores", key_added, record)
    logg.info(f"    finished: added obs[{key_added!r}]", time=start)
    return wrap_return(container, copy=copy)
