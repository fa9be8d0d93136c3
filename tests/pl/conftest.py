"""Fixtures for plot tests: fixed matplotlib style and an image comparison against tests/_images/<name>/expected.png."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest

mpl.use("agg")

import matplotlib.pyplot as plt
from matplotlib.testing.compare import compare_images

import scsig as sg

IMAGES = Path(__file__).resolve().parents[1] / "_images"
DPI = 40
TOL = 15
"""RMS tolerance of :func:`matplotlib.testing.compare.compare_images` (0-255 scale)."""


@pytest.fixture(autouse=True)
def _fixed_style():
    """matplotlib's default style, DejaVu Sans 8 pt, closed figures: images independent of the caller's rcParams."""
    with mpl.rc_context():
        mpl.style.use("default")
        mpl.rcParams.update({"font.family": "DejaVu Sans", "font.size": 8, "text.hinting": "none", "svg.hashsalt": "0"})
        yield
    plt.close("all")


@pytest.fixture
def check_image():
    """``check_image(name, fig)``: save at dpi 40 to tests/_images/<name>/actual.png and compare to expected.png.

    Set ``SCSIG_UPDATE_IMAGES=1`` to (re)write expected.png instead; look at it before committing.
    actual.png and diff.png stay next to expected.png after a failure (git-ignored).
    """

    def check(name: str, fig, tol: float = TOL) -> None:
        folder = IMAGES / name
        folder.mkdir(parents=True, exist_ok=True)
        expected, actual = folder / "expected.png", folder / "actual.png"
        if os.environ.get("SCSIG_UPDATE_IMAGES") == "1":
            fig.savefig(expected, dpi=DPI, bbox_inches="tight")
            return
        fig.savefig(actual, dpi=DPI, bbox_inches="tight")
        if not expected.exists():
            pytest.fail(f"No expected image {expected}; run with SCSIG_UPDATE_IMAGES=1 and inspect it.")
        result = compare_images(str(expected), str(actual), tol=tol)
        if result is not None:
            failed_diff = folder / "actual-failed-diff.png"
            if failed_diff.exists():
                failed_diff.replace(folder / "diff.png")
            pytest.fail(f"{name}: {result}")
        actual.unlink()

    return check


@pytest.fixture
def scored():
    """The toy data with IG attributions, a 5-gene score, a ``cond`` column and a ``sample`` column."""
    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, progress=False)
    sg.tl.score(adata, ["g0", "g1", "g2", "g3", "g10"], mode="classic")  # the scores the baseline images show
    adata.obs["cond"] = pd.Categorical(np.tile(["ctrl", "stim"], adata.n_obs // 2))
    adata.obs["sample"] = pd.Categorical([f"s{i % 6}" for i in range(adata.n_obs)])
    return adata
