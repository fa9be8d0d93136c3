"""sg.Atlas on bad input: clear errors and warnings."""

from __future__ import annotations

import pandas as pd
import pytest

import scsig as sg


@pytest.fixture
def toy_atlas(tmp_path, attributed_toy):
    adata, model = attributed_toy
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    atlas.add(adata, name="toy")
    return atlas


def test_create_gene_order_as_a_string(tmp_path):
    with pytest.raises(TypeError, match="list of gene names"):
        sg.Atlas.create(tmp_path / "atlas", gene_order="g0")
    assert not (tmp_path / "atlas").exists()


def test_filter_that_selects_no_cells_warns(toy_atlas):
    with pytest.warns(UserWarning, match="selects no cells"):
        frame = toy_atlas.score(["g0", "g1"], obs_filter={"group": "A"}, progress=False)
    assert len(frame) == 0
    with pytest.warns(UserWarning, match="selects no cells"):
        toy_atlas.to_anndata(["g0"], obs_filter="group == 'A'", progress=False)


def test_score_numeric_series_is_gene_weights(toy_atlas):
    weights = {"g0": 1.0, "g1": 3.0}
    expected = toy_atlas.score(weights, progress=False)
    got = toy_atlas.score(pd.Series(weights), progress=False)
    pd.testing.assert_frame_equal(got, expected)
