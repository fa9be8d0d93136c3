"""Integrated gradients' completeness gap: computed per cell as captum defines it, reported, and n_steps='auto'."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from scipy import sparse

import scsig as sg
from scsig.tl._attribute_run import AUTO_STEPS
from scsig.tl._completeness import GAP_TOLERANCE, WARN_FRACTION


def _captum_gap(adata, model, n_steps):
    """|captum's convergence delta| / |t(x) - t(0)| per cell, on captum's own IG of the same target."""
    prepared = sg.pp.prepare(adata, model)
    inputs = torch.tensor(prepared.X.toarray(), dtype=torch.float32)
    module = sg.attribution.TargetModule(model.encoder, "self_similarity")
    base = torch.zeros_like(inputs)
    reference = module.reference(inputs, base)
    _, delta = IntegratedGradients(module).attribute(
        inputs.requires_grad_(),
        baselines=base,
        target=0,
        additional_forward_args=(reference,),
        n_steps=n_steps,
        method="gausslegendre",
        return_convergence_delta=True,
    )
    with torch.no_grad():
        change = (module(inputs, reference) - module(base, reference))[:, 0].double().numpy()
    return np.abs(delta.detach().double().numpy()) / np.abs(change)


@pytest.mark.parametrize("n_steps", [5, 50])
def test_gap_equals_captum_convergence_delta(toy, n_steps):
    adata, model = toy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sg.tl.attribute(adata, model, n_steps=n_steps, completeness_key="ig_gap", engine="captum")
    expected = _captum_gap(adata, model, n_steps)
    np.testing.assert_allclose(adata.obs["ig_gap"], expected, rtol=0.05, atol=2e-5)
    summary = adata.uns["scsig"]["layers"]["attr_ig"]["completeness_gap"]
    assert summary["median"] == pytest.approx(np.median(adata.obs["ig_gap"]))
    assert summary["n_above_1pct"] == int((adata.obs["ig_gap"] > 0.01).sum())
    assert summary["max"] == pytest.approx(adata.obs["ig_gap"].max())


def test_fast_engine_gap_matches(toy):
    adata, model = toy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sg.tl.attribute(adata, model, n_steps=20, completeness_key="gap", engine="fast")
    np.testing.assert_allclose(adata.obs["gap"], _captum_gap(adata, model, 20), rtol=0.05, atol=2e-5)


def test_warning_names_n_steps_and_more_steps_close_the_gap(toy):
    adata, model = toy
    with pytest.warns(
        UserWarning, match=r"completeness gap .* above 1 % for \d+ of 60 cells at n_steps=5 .*Raise n_steps"
    ):
        sg.tl.attribute(adata, model, n_steps=5)
    low = adata.uns["scsig"]["layers"]["attr_ig"]["completeness_gap"]["median"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sg.tl.attribute(adata, model, n_steps=800, key_added="attr_800")
    high = adata.uns["scsig"]["layers"]["attr_800"]["completeness_gap"]["median"]
    assert high < GAP_TOLERANCE < low
    assert "ig_gap" not in adata.obs  # per-cell values only on request


def test_auto_n_steps(toy):
    adata, model = toy
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sg.tl.attribute(adata, model, n_steps="auto", completeness_key="gap")
    rec = adata.uns["scsig"]["layers"]["attr_ig"]
    chosen = rec["n_steps"]
    fractions = list(rec["auto_fraction_above_1pct"])
    assert rec["n_steps_auto"] is True
    assert len(rec["auto_median_gaps"]) == len(fractions)
    assert chosen == AUTO_STEPS[len(fractions) - 1]
    # most sampled cells converged, with a margin below the warning's fraction (or the largest step count tried)
    assert fractions[-1] <= WARN_FRACTION / 2 or chosen == AUTO_STEPS[-1]
    assert fractions[-1] <= WARN_FRACTION
    assert all(f > WARN_FRACTION / 2 for f in fractions[:-1])
    assert chosen > AUTO_STEPS[0]  # the toy model needs more than 20 steps
    assert rec["completeness_gap"]["fraction_above_1pct"] <= WARN_FRACTION
    assert rec["completeness_gap"]["fraction_above_1pct"] == pytest.approx(np.mean(adata.obs["gap"] > GAP_TOLERANCE))
    again = sg.tl.attribute(adata, model, n_steps=chosen, key_added="fixed", copy=True)
    np.testing.assert_allclose(again.layers["fixed"].toarray(), adata.layers["attr_ig"].toarray(), rtol=1e-5)


def test_auto_n_steps_that_still_warns_says_what_auto_chose(toy, monkeypatch):
    import scsig.tl._attribute_run as attribute_run

    monkeypatch.setattr(attribute_run, "AUTO_STEPS", (5,))  # too few for the toy model: the run still warns
    adata, model = toy
    with pytest.warns(UserWarning, match=r"n_steps='auto' chose 5 on a sample of the cells; pass a larger n_steps"):
        sg.tl.attribute(adata, model, n_steps="auto")
    assert adata.uns["scsig"]["layers"]["attr_ig"]["n_steps"] == 5


def test_bad_completeness_options(toy):
    adata, model = toy
    with pytest.raises(ValueError, match="needs method='ig'"):
        sg.tl.attribute(adata, model, method="ixg", target="embedding_distance", completeness_key="gap")
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        sg.tl.attribute(adata, model, n_steps="many")


def test_negative_input_refused_even_without_check_counts(toy):
    adata, model = toy
    x = adata.X.toarray().astype(np.float32)
    x[0, 0] = -1.0
    view = ad.AnnData(sparse.csr_matrix(x), obs=adata.obs, var=adata.var)[:30]
    with pytest.raises(ValueError, match="negative values"):
        sg.tl.attribute(view, model, check_counts=False)
    assert view.is_view  # a failing call leaves the view a view
    assert "attr_ig" not in view.layers


def test_non_integer_allowed_with_check_counts_false(toy):
    adata, model = toy
    adata.X = adata.X.astype(np.float32) * 1.5
    with pytest.raises(ValueError, match="non-integer"):
        sg.tl.attribute(adata, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sg.tl.attribute(adata, model, check_counts=False)
    assert "attr_ig" in adata.layers


def test_warns_on_the_unconverged_tail_not_only_the_median():
    from scsig.tl._completeness import _gap_summary, _warn_gap

    gaps = np.r_[np.full(70, 0.001), np.full(30, 0.05)]  # median 0.1 %, but 30 % of the cells above 1 %
    summary = _gap_summary(gaps)
    assert summary["median"] < GAP_TOLERANCE
    assert summary["fraction_above_1pct"] == pytest.approx(0.3)
    with pytest.warns(UserWarning, match="above 1 % for 30 of 100 cells"):
        _warn_gap(summary, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_gap(_gap_summary(np.r_[np.full(95, 0.001), np.full(5, 0.05)]), 50)  # 5 %: most cells converged
