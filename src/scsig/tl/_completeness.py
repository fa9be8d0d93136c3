"""How trustworthy a run of attributions is: degenerate attributions and integrated gradients' completeness gap."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._utils._warn import user_stacklevel

__all__ = [
    "DEGENERATE_RATIO",
    "GAP_TOLERANCE",
    "WARN_FRACTION",
    "DegenerateAttributionError",
    "check_rows",
    "fraction_above",
    "warn_no_signal",
]

DEGENERATE_RATIO = 1e-3
"""Attributions whose total raw mass is below this fraction of the target's change are degenerate."""

_GRADIENT_AT_INPUT = {"ixg": "input x gradient", "dl": "DeepLIFT"}


class DegenerateAttributionError(ValueError):
    """The attributions carry no signal: the target's gradient at the input is (numerically) zero."""


def _check_degenerate(raw_mass: np.ndarray, delta: np.ndarray, method: str, target: str) -> str | None:
    """A message when the attributions are float noise relative to the target's change, else None."""
    ok = delta > 1e-6
    if not ok.any():
        return None
    ratio = float(np.median(raw_mass[ok] / delta[ok]))
    if ratio >= DEGENERATE_RATIO:
        return None
    name = _GRADIENT_AT_INPUT.get(method, method)
    return (
        f"The {name} attributions are degenerate: their total mass per cell is {ratio:.1e} of the target's change "
        f"|t(x) - t(0)|, i.e. floating-point noise. With target={target!r} the target is maximal at the input "
        "itself, so its gradient there is analytically zero, and rescaling each cell to target_sum would turn "
        "that noise into fake attributions. Use method='ig' (integrated gradients integrates along the path from "
        f"the baseline), or choose target='embedding_distance' explicitly for method={method!r}."
    )


def check_rows(raw: Any, t_in: np.ndarray, t_base: np.ndarray, cells: Any) -> np.ndarray:
    """Refuse NaN or infinite attributions or targets; return which cells have no attribution at all.

    A cell whose target does not change between the baseline and the cell (a dead or constant
    embedding, e.g. every ReLU output zero) gets a row of zeros: it has no signal, which the caller
    reports rather than storing it as if it were valid.
    """
    mass = np.asarray(abs(raw).sum(axis=1), dtype=np.float64).ravel()
    bad = ~(
        np.isfinite(mass)
        & np.isfinite(np.asarray(t_in, dtype=np.float64))
        & np.isfinite(np.asarray(t_base, dtype=np.float64))
    )
    if bad.any():
        names = [str(cells[i]) for i in np.flatnonzero(bad)[:5]]
        msg = (
            f"The model's embedding (or the attribution target on it) is NaN or infinite for {int(bad.sum())} of "
            f"{bad.size} cells in this batch (e.g. {names}), so their attributions would be NaN. The model is broken "
            "for those inputs (e.g. a log or division of zero inside it): check it on them (model.embed(...)), or "
            "leave those cells out."
        )
        raise ValueError(msg)
    return mass == 0


def warn_no_signal(no_signal: np.ndarray, has_counts: np.ndarray, cells: Any) -> None:
    """Refuse a run where no cell has any attribution; warn about the cells without one."""
    dead = np.flatnonzero(no_signal & has_counts)
    if dead.size == 0:
        return
    names = [str(cells[i]) for i in dead[:5]]
    what = (
        "the model's embedding does not change between the zero baseline and these cells (a dead or constant "
        "embedding, e.g. every ReLU output zero)"
    )
    if dead.size == int(has_counts.sum()):
        msg = f"No cell has any attribution: {what}. Check the model (model.embed on a few cells) before attributing."
        raise ValueError(msg)
    warnings.warn(
        f"{dead.size} cells with counts have no attribution at all (e.g. {names}): {what}; their rows are zero and "
        "their scores will be 0. adata.uns['scsig']['layers'][key]['n_cells_without_attribution'] records the number.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


GAP_TOLERANCE = 0.01
"""A cell's integrated gradients are converged when its completeness gap is at most this (1 %)."""

WARN_FRACTION = 0.1
"""``attribute`` warns when more than this fraction of the cells is above :data:`GAP_TOLERANCE`;
``n_steps="auto"`` takes the fewest steps that bring at most half this fraction of its sample above it."""


def _completeness_gap(raw: Any, t_in: np.ndarray, t_base: np.ndarray) -> np.ndarray:
    """Per cell, |sum of raw attributions - (t(x) - t(baseline))| / |t(x) - t(baseline)| (NaN when t does not change)."""
    total = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
    delta = np.asarray(t_in, dtype=np.float64).ravel() - np.asarray(t_base, dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.abs(total - delta) / np.abs(delta)
    gap[~(np.abs(delta) > 1e-12)] = np.nan
    return gap


def _gap_summary(gaps: np.ndarray) -> dict[str, float | int]:
    """Median, 90th percentile, maximum, and the number and fraction of cells above :data:`GAP_TOLERANCE`."""
    ok = gaps[np.isfinite(gaps)]
    if ok.size == 0:
        nan = float("nan")
        return {"median": nan, "p90": nan, "max": nan, "n_above_1pct": 0, "fraction_above_1pct": 0.0, "n_cells": 0}
    above = int((ok > GAP_TOLERANCE).sum())
    return {
        "median": float(np.median(ok)),
        "p90": float(np.percentile(ok, 90)),
        "max": float(ok.max()),
        "n_above_1pct": above,
        "fraction_above_1pct": above / ok.size,
        "n_cells": int(ok.size),
    }


def fraction_above(gaps: np.ndarray) -> float:
    """Fraction of the cells (with a defined gap) whose completeness gap is above :data:`GAP_TOLERANCE`."""
    ok = gaps[np.isfinite(gaps)]
    return float((ok > GAP_TOLERANCE).mean()) if ok.size else 0.0


def _warn_gap(summary: dict, n_steps: int, *, auto: bool = False) -> None:
    """Warn when more than :data:`WARN_FRACTION` of the cells are not converged (the median alone hides a long tail)."""
    if summary["n_cells"] and summary["n_above_1pct"] > WARN_FRACTION * summary["n_cells"]:
        advice = (
            f"n_steps='auto' chose {n_steps} on a sample of the cells; pass a larger n_steps (e.g. n_steps={4 * n_steps})"
            if auto
            else f"Raise n_steps (e.g. n_steps={4 * n_steps}) or pass n_steps='auto'"
        )
        warnings.warn(
            f"Integrated gradients' completeness gap |sum of attributions - (t(x) - t(0))| / |t(x) - t(0)| is above "
            f"1 % for {summary['n_above_1pct']} of {summary['n_cells']} cells at n_steps={n_steps} (median "
            f"{100 * summary['median']:.2g} %, 90th percentile {100 * summary['p90']:.2g} %): the path integral is "
            f"not converged for those cells. {advice}; "
            "adata.uns['scsig']['layers'][key]['completeness_gap'] records the numbers.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
