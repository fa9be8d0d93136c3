"""One resolver for gene signatures, used by ``sg.tl.score``, ``sg.tl.compare_scores`` and the atlas.

:func:`parse_signatures` normalizes what a user passes (one gene, a list, a gene -> weight dict or
Series, or a dict name -> any of those); :func:`resolve_signatures` matches each signature to a gene
index and returns the columns and coefficients to score with, warning about (and recording) the
genes left out.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._utils._choices import check_choice
from ._utils._warn import user_stacklevel

__all__ = ["Aggregate", "Signature", "parse_signatures", "resolve_signatures"]

Aggregate = Literal["mean", "sum"]
"""How a signature's gene values combine into its score: their (weighted) mean or sum."""


def _is_weight_map(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, Real) and not isinstance(v, bool) for v in obj.values())


def _as_gene_list(genes: Any, *, name: str) -> tuple[list[str], np.ndarray | None]:
    if isinstance(genes, str):  # one gene
        return [genes], None
    if isinstance(genes, Mapping):
        if not _is_weight_map(genes):
            msg = f"Signature {name!r}: a dict must map gene -> numeric weight."
            raise TypeError(msg)
        return [str(g) for g in genes], np.asarray(list(genes.values()), dtype=np.float64)
    if (
        isinstance(genes, pd.Series)
        and pd.api.types.is_numeric_dtype(genes.dtype)
        and not pd.api.types.is_bool_dtype(genes.dtype)
        and not pd.api.types.is_integer_dtype(genes.index.dtype)
    ):  # weights indexed by gene, e.g. a column of a gene x signature table
        return [str(g) for g in genes.index], genes.to_numpy(dtype=np.float64)
    if not isinstance(genes, Sequence | np.ndarray | pd.Index | pd.Series | set | frozenset):
        msg = (
            f"Signature {name!r}: pass a gene, a list of genes, a dict gene -> weight, or a dict name -> list of "
            f"genes; got {type(genes).__name__}."
        )
        raise TypeError(msg)
    return [str(g) for g in genes], None


def parse_signatures(
    genes: Any, weights: Sequence[float] | None = None
) -> tuple[dict[str, tuple[list[str], np.ndarray | None]], bool]:
    """Normalize the ``genes`` argument: ``({name: (genes, weights)}, several)``."""
    several = isinstance(genes, Mapping) and len(genes) > 0 and not _is_weight_map(genes)
    if several:
        if weights is not None:
            msg = "weights= goes with a single gene list; for several signatures give each a dict gene -> weight."
            raise ValueError(msg)
        sigs = {}
        for k, v in genes.items():
            if not str(k):
                msg = "A signature name is empty; give every signature a non-empty name."
                raise ValueError(msg)
            sigs[str(k)] = _as_gene_list(v, name=str(k))
    else:
        gl, w = _as_gene_list(genes, name="signature")
        if weights is not None:
            if w is not None:
                msg = "Give weights either as a dict gene -> weight or as weights=, not both."
                raise ValueError(msg)
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(gl),):
                msg = f"weights has {w.size} values but the signature has {len(gl)} genes."
                raise ValueError(msg)
        sigs = {"signature": (gl, w)}
    for name, (gl, w) in sigs.items():
        if not gl:
            msg = f"Signature {name!r} is empty."
            raise ValueError(msg)
        index = pd.Index(gl)
        if not index.is_unique:
            dup = index[index.duplicated()].unique().tolist()[:5]
            msg = f"Signature {name!r} lists genes more than once ({dup}); remove the duplicates."
            raise ValueError(msg)
        if w is not None and (not np.all(np.isfinite(w)) or w.sum() == 0):
            msg = f"Signature {name!r}: weights must be finite and must not sum to 0."
            raise ValueError(msg)
    return sigs, several


@dataclass
class Signature:
    """A signature matched to a gene index."""

    name: str
    genes: list[str]
    """The genes used, in the signature's order."""
    cols: np.ndarray
    """Their positions in the gene index."""
    coef: np.ndarray
    """The coefficient of each used gene: weight / sum of weights (mean) or weight (sum)."""
    weights: np.ndarray | None
    """The user's weights of the used genes, ``None`` when unweighted."""
    missing: list[str]

    def record(self) -> dict[str, Any]:
        """What ``uns`` records about the signature."""
        return {
            "genes": list(self.genes),
            "weights": self.weights.tolist() if self.weights is not None else "none",
            "missing": list(self.missing),
        }


def resolve_signatures(
    genes: Any,
    weights: Sequence[float] | None = None,
    *,
    index: pd.Index,
    known: np.ndarray | None = None,
    aggregate: Aggregate = "mean",
    where: str = "adata.var_names and known to the model",
    missing_text: str = "not in adata.var or unknown to the model",
) -> tuple[list[Signature], bool]:
    """Parse ``genes`` and match every signature to ``index`` (and the ``known`` mask over it).

    Genes not in ``index`` (or not ``known``) are left out with a warning; a signature with no
    usable gene, or whose usable genes' weights sum to 0, is an error. Returns the signatures and
    whether several were given (a dict name -> genes).
    """
    check_choice("aggregate", aggregate, Aggregate)
    sigs, several = parse_signatures(genes, weights)
    out = []
    for name, (gl, w) in sigs.items():
        pos = index.get_indexer(pd.Index(gl, dtype=object))
        usable = pos >= 0
        if known is not None:
            usable &= known[np.maximum(pos, 0)]
        missing = [g for g, ok in zip(gl, usable, strict=True) if not ok]
        label = f"signature {name!r}" if several else "the signature"
        if not usable.any():
            msg = (
                f"None of the {len(gl)} genes of {label} is in {where} (e.g. {gl[:5]}). Check the gene names "
                "(symbols vs Ensembl IDs), and that the genes were not filtered out (e.g. by subsetting to "
                "highly variable genes)."
            )
            raise ValueError(msg)
        if missing:
            warnings.warn(
                f"{len(missing)} of {len(gl)} genes of {label} are {missing_text} and are left out: "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        wv = None if w is None else w[usable]
        if wv is not None and wv.sum() == 0:
            msg = f"The weights of the usable genes of {label} sum to 0."
            raise ValueError(msg)
        ones = np.ones(int(usable.sum()))
        base = ones if wv is None else wv
        coef = base / base.sum() if aggregate == "mean" else base
        out.append(
            Signature(
                name=name,
                genes=[g for g, ok in zip(gl, usable, strict=True) if ok],
                cols=pos[usable],
                coef=coef,
                weights=wv,
                missing=missing,
            )
        )
    return out, several
