from __future__ import annotations

import pandas as pd
import pytest

import scsig as sg


def _table():
    return pd.DataFrame(
        {
            "method": ["attribution", "score_genes"] * 3,
            "group": ["all", "all", "B", "B", "T", "T"],
            "auroc": [0.95, 0.9, 0.97, 0.85, 0.92, 0.93],
            "depth_rho": [0.1, 0.4, 0.05, 0.5, 0.12, 0.3],
            "n_positive": 10,
            "n_negative": 10,
        }
    )


def test_compare_scores_image(check_image):
    fig = sg.pl.compare_scores(_table(), return_fig=True)
    check_image("compare_scores", fig)


def test_compare_scores_from_adata(scored):
    sg.tl.compare_scores(
        scored, ["g0", "g1", "g2"], contrast="group", positive="b", methods=["attribution", "score_genes"]
    )
    axes = sg.pl.compare_scores(scored, show=False)
    assert len(axes) == 2
    assert axes[0].get_title(loc="left") == "group: b vs the rest"  # the figure names its contrast
    returned = sg.tl.compare_scores(
        scored, ["g0", "g1", "g2"], contrast="group", positive="b", methods=["attribution"], key_added="c2"
    )
    assert sg.pl.compare_scores(returned, show=False)[0].get_title(loc="left") == "group: b vs the rest"
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["all"]
    with pytest.raises(KeyError, match="Run sg.tl.compare_scores"):
        sg.pl.compare_scores(scored, key="other", show=False)
    with pytest.raises(KeyError, match="metric"):
        sg.pl.compare_scores(_table(), metrics=("auroc", "nope"), show=False)
