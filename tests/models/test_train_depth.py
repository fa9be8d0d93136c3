"""Depth-robust training options of train_encoder: the consistency terms, checked by hand and with captum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scsig as sg
from scsig.models._scimilarity import SCimilarityEncoder
from scsig.models._train_losses import _normalize, depth_consistency_losses

from .conftest import FAST


def _shares_with_captum(encoder, x, anchor, n_steps=4):
    """IG (midpoint rule) shares of t(x') = sum_k |anchor_k f(x')_k|, one cell at a time, by captum."""
    from captum.attr import IntegratedGradients

    encoder.eval()  # one cell at a time: no batch coupling
    out = []
    for i in range(x.shape[0]):

        def target(inp, i=i):
            return (encoder(inp) * anchor[i]).abs().sum(dim=1)

        ig = IntegratedGradients(target)
        a = ig.attribute(x[i : i + 1].clone(), n_steps=n_steps, method="riemann_middle").abs().detach().numpy()[0]
        out.append(a / a.sum())
    return np.array(out)


def test_consistency_losses_by_hand_and_captum():
    torch.manual_seed(0)
    encoder = SCimilarityEncoder(12, (8,), 4, dropout=0.0, input_dropout=0.0)
    encoder.eval()  # eval mode makes each row independent, so each cell can be checked alone
    counts = torch.poisson(torch.full((5, 12), 3.0))
    thinned = torch.binomial(counts, torch.full_like(counts, 0.5), generator=torch.Generator().manual_seed(1))
    full, views = _normalize(counts, 1e4), _normalize(torch.cat([thinned, counts]), 1e4)
    z_views, embed, attr = depth_consistency_losses(encoder, views, full, attributions=True, n_steps=4)
    assert not encoder.training
    with torch.no_grad():
        zf, zv = encoder(full), encoder(views)
    cos = (zv * zf.repeat(2, 1)).sum(1)
    np.testing.assert_allclose(z_views.detach().numpy(), zv.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(embed.detach()), float((1 - cos).mean()), rtol=1e-5)
    s_full = _shares_with_captum(encoder, full, zf)
    s_thin = _shares_with_captum(encoder, views[:5], zf)
    s_same = _shares_with_captum(encoder, views[5:], zf)
    tv = 0.5 * np.abs(np.vstack([s_thin, s_same]) - np.vstack([s_full, s_full])).sum(1)
    np.testing.assert_allclose(float(attr.detach()), tv.mean(), rtol=1e-4)
    assert tv[5:].max() < 1e-6  # an unthinned view spreads its attribution exactly as the cell does
    attr.backward()  # differentiable
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    encoder.train()
    depth_consistency_losses(encoder, views, full, attributions=True)
    assert encoder.training  # the mode is restored


def test_train_with_consistency_terms(toy_counts):
    base = sg.models.train_encoder(toy_counts, labels="group", n_top_genes=None, **FAST)
    both = sg.models.train_encoder(
        toy_counts, labels="group", n_top_genes=None, consistency=1.0, attribution_consistency=1.0, **FAST
    )
    again = sg.models.train_encoder(
        toy_counts, labels="group", n_top_genes=None, consistency=1.0, attribution_consistency=1.0, **FAST
    )
    assert both.training["consistency"] == 1.0
    assert both.training["attribution_consistency"] == 1.0
    assert base.training["consistency"] == 0.0
    sd_base, sd_both, sd_again = (m.encoder.state_dict() for m in (base, both, again))
    assert any(not torch.equal(sd_base[k], sd_both[k]) for k in sd_base)
    assert all(torch.equal(sd_both[k], sd_again[k]) for k in sd_both)  # deterministic with the terms too
    assert toy_counts.n_obs == 80  # not changed


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"consistency": -1.0}, "consistency must be a finite number >= 0"),
        ({"attribution_consistency": float("nan")}, "attribution_consistency must be"),
        ({"consistency": "1"}, "consistency must be"),
        ({"attribution_steps": 0}, "attribution_steps must be a positive integer"),
    ],
)
def test_bad_consistency(toy_counts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sg.models.train_encoder(toy_counts, n_top_genes=None, **FAST, **kwargs)
