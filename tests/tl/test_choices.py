"""Choice arguments of sg.tl are declared once as a Literal and checked against it."""

from __future__ import annotations

import sys

import pytest

import scsig as sg
from scsig._signature import Aggregate
from scsig._utils import literal_values
from scsig.tl._score_modes import MODES, ScoreMode


@pytest.fixture(scope="module")
def attributed():
    adata, model = sg.datasets.toy()
    sg.tl.attribute(adata, model, progress=False)
    return adata


def test_score_annotations_are_the_checked_literals():
    # only these two annotations are evaluated: the others name types imported for type checking alone
    module = vars(sys.modules[sg.tl.score.__module__])
    hints = {k: eval(sg.tl.score.__annotations__[k], module) for k in ("aggregate", "mode")}
    assert literal_values(hints["aggregate"]) == ("mean", "sum")
    assert hints["aggregate"] == Aggregate
    assert hints["mode"] == ScoreMode
    assert literal_values(ScoreMode) == MODES


@pytest.mark.parametrize(
    ("kwds", "match"),
    [
        ({"aggregate": "median"}, r"aggregate must be one of 'mean', 'sum'; got 'median'"),
        ({"mode": "average"}, r"mode must be one of 'classic', .*'detected'; got 'average'"),
    ],
)
def test_score_unknown_choice_names_the_choices(attributed, kwds, match):
    before = set(attributed.obs.columns)
    with pytest.raises(ValueError, match=match):
        sg.tl.score(attributed, ["g0", "g1"], **kwds)
    assert set(attributed.obs.columns) == before
