"""Input validation shared by every public function that reads counts."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._warn import user_stacklevel

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MAX_COUNT", "check_counts", "check_unique", "data_values"]

MAX_COUNT = 1 << 24
"""Largest count accepted as raw counts (2**24): above it float32 cannot hold every whole number."""


def data_values(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    """The stored values of a matrix (non-zeros of a sparse one)."""
    if sparse.issparse(x):
        return np.asarray(x.data)
    return np.asarray(x).ravel()


def check_counts(x: np.ndarray | sparse.spmatrix, *, where: str = "adata.X", require_integer: bool = True) -> None:
    """Raise when ``x`` cannot be raw counts: negative, NaN/inf, or non-integer values.

    Parameters
    ----------
    x
        Matrix (or a batch of it) to check.
    where
        How to name the matrix in messages.
    require_integer
        Refuse non-integer values and counts above 2**24 (``MAX_COUNT``).
    """
    values = data_values(x)
    if values.size == 0:
        return
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            n_bad = int((~finite).sum())
            msg = (
                f"{where} holds {n_bad} NaN or infinite values. Raw counts are finite: fix or drop those cells "
                "(e.g. `adata = adata[np.isfinite(adata.X.sum(1))]`) or pass the layer that holds raw counts."
            )
            raise ValueError(msg)
    vmin = values.min()
    if vmin < 0:
        msg = (
            f"{where} holds negative values (minimum {vmin:g}); it looks scaled or centred, not raw counts. "
            "Pass layer= the layer holding raw counts (e.g. layer='counts')."
        )
        raise ValueError(msg)
    if require_integer and np.issubdtype(values.dtype, np.floating):
        frac = values != np.round(values)
        if frac.any():
            vmax = values.max()
            hint = (
                " It looks log-transformed (all values below 20)."
                if vmax < 20
                else " It looks normalized (e.g. counts per 10k)."
            )
            msg = (
                f"{where} holds non-integer values ({int(frac.sum())} of {values.size} stored values), so it is not "
                f"raw counts.{hint} Pass layer= the layer with raw counts; if the values are intentionally "
                "non-integer counts (e.g. ambient-corrected), pass check_counts=False."
            )
            raise ValueError(msg)
    if require_integer and values.max() > MAX_COUNT:
        msg = (
            f"{where} holds a count of {float(values.max()):.6g}, above {MAX_COUNT:,} (2**24, the largest whole number "
            "float32 stores exactly). No single-cell experiment counts that many molecules of one gene in one cell: "
            "the data are likely damaged (e.g. a flipped byte in the file). Check the source; if the values are "
            "intended, pass check_counts=False."
        )
        raise ValueError(msg)


def check_unique(names: Sequence[str], *, what: str, fix: str) -> None:
    """Raise when ``names`` has duplicates, naming the first few and the fix."""
    import pandas as pd

    index = pd.Index(names)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        msg = f"{what} has {int(index.duplicated().sum())} duplicate entries (e.g. {dup}). {fix}"
        raise ValueError(msg)


def check_unique_var_names(var_names: Sequence[str]) -> None:
    """Raise when ``adata.var_names`` has duplicates: a gene name must name one column."""
    check_unique(
        var_names,
        what="adata.var_names",
        fix="Make them unique with `adata.var_names_make_unique()` so each gene names one column.",
    )


def warn_empty_cells(totals: np.ndarray, obs_names: Sequence[str], *, what: str) -> None:
    """Warn about cells whose total is zero (their attributions and scores will be 0)."""
    empty = np.flatnonzero(totals <= 0)
    if empty.size:
        names = [str(obs_names[i]) for i in empty[:5]]
        warnings.warn(
            f"{empty.size} cells have zero counts {what} (e.g. {names}); their attributions and scores are 0. "
            "Filter them first (e.g. `sc.pp.filter_cells(adata, min_counts=1)`) if that is not intended.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
