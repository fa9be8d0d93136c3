"""sg.get.hit_fractions on bad input: clear errors, views left alone."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scsig as sg


@pytest.fixture
def calls():
    """60 cells, 6 samples in two conditions, a one-level column and hit calls."""
    obs = pd.DataFrame(
        {
            "condition": np.repeat(["ctrl", "stim"], 30),
            "sample": np.repeat([f"s{i}" for i in range(6)], 10),
            "one": "x",
            "score_hit": np.arange(60) % 4 == 0,
        },
        index=[f"c{i}" for i in range(60)],
    )
    return ad.AnnData(obs=obs)


def test_tests_need_two_levels(calls):
    with pytest.raises(ValueError, match="needs at least 2"):
        sg.get.hit_fractions(calls, "score_hit", groupby="one", sample_key="sample", return_tests=True)


def test_tests_without_cells(calls):
    with pytest.raises(ValueError, match="needs at least 2"):
        sg.get.hit_fractions(calls[:0].copy(), "score_hit", groupby="condition", sample_key="sample", return_tests=True)


def test_leaves_a_view_alone(calls):
    view = calls[calls.obs["condition"] == "stim"]
    sg.get.hit_fractions(view, "score_hit", groupby="condition", sample_key="sample")
    assert view.is_view
