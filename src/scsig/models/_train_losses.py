"""The pieces of :func:`scsig.models.train_encoder`'s loss: normalization, augmentation, contrastive and consistency terms."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["attribution_shares", "contrastive_loss", "depth_consistency_losses"]


def _normalize(x: torch.Tensor, target_sum: float) -> torch.Tensor:
    """SCimilarity's recipe in torch: scale each cell to ``target_sum`` over the model's genes, log1p."""
    import torch

    totals = x.sum(dim=1, keepdim=True)
    scale = torch.where(totals > 0, target_sum / totals.clamp_min(1e-12), torch.zeros_like(totals))
    return torch.log1p(x * scale)


def _augment(
    x: torch.Tensor, *, thinning: tuple[float, float], gene_dropout: float, gen: torch.Generator
) -> torch.Tensor:
    """One random view of a batch of counts: binomial thinning to a random depth, then gene dropout."""
    import torch

    lo, hi = thinning
    out = x
    if hi < 1.0 or lo < 1.0:
        keep = lo + (hi - lo) * torch.rand((x.shape[0], 1), generator=gen)
        out = torch.binomial(x, keep.expand_as(x).contiguous(), generator=gen)
    if gene_dropout > 0:
        mask = torch.rand(x.shape, generator=gen) >= gene_dropout
        out = out * mask
    return out


def contrastive_loss(z: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020) on L2-normalized embeddings.

    ``z`` holds two views of each cell stacked (``2n`` rows) and ``ids`` one id per row. For each
    row :math:`i` the positives :math:`P(i)` are the other rows with the same id, and
    :math:`\ell_i = -\frac{1}{|P(i)|}\sum_{p \in P(i)} \log
    \frac{\exp(z_i \cdot z_p / \tau)}{\sum_{a \ne i} \exp(z_i \cdot z_a / \tau)}`. With one id per
    cell this is the NT-Xent loss of SimCLR (self-supervised); with class ids it pulls together
    all cells of a class.
    """
    import torch

    sim = z @ z.T / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (ids[:, None] == ids[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    per_row = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1) / n_pos.clamp_min(1)
    return per_row[n_pos > 0].mean()


def attribution_shares(encoder: torch.nn.Module, x: torch.Tensor, anchor: torch.Tensor, n_steps: int) -> torch.Tensor:
    r"""Differentiable integrated-gradient attribution shares of the self-similarity target.

    For each row of ``x`` (normalized input) the target is :math:`t(x') = \sum_k |a_k f(x')_k|`
    with ``anchor`` :math:`a` fixed (the embedding of the unaugmented cell), as in
    :func:`scsig.tl.attribute`. Integrated gradients from the zero baseline are approximated by the
    midpoint rule with ``n_steps`` points, :math:`x_g \frac{1}{m}\sum_j \partial t / \partial x_g
    ((j - \tfrac12) x / m)`, and the absolute values are divided by their row sum. The graph is kept
    (``create_graph``), so a loss on the shares trains the encoder. The encoder should be in eval
    mode, so that each row is attributed on its own, as at inference.
    """
    import torch

    x = x.detach()
    alphas = (torch.arange(n_steps, dtype=x.dtype) + 0.5) / n_steps
    path = (alphas[:, None, None] * x[None]).reshape(-1, x.shape[1]).requires_grad_(requires_grad=True)
    target = (encoder(path) * anchor.repeat(n_steps, 1)).abs().sum()
    (grad,) = torch.autograd.grad(target, path, create_graph=True)
    attr = (x * grad.reshape(n_steps, *x.shape).mean(dim=0)).abs()
    return attr / attr.sum(dim=1, keepdim=True).clamp_min(1e-12)


def depth_consistency_losses(
    encoder: torch.nn.Module, views: torch.Tensor, full: torch.Tensor, *, attributions: bool, n_steps: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""Consistency of an embedding, and of its attributions, between cells and their augmented views.

    ``views`` holds normalized augmented views (``k * n`` rows, ``k`` views of each cell, stacked)
    and ``full`` the same ``n`` cells normalized without augmentation. Both pass through
    ``encoder`` in one batch (in the encoder's current mode). Returns the views' embeddings, the
    mean embedding term :math:`1 - \cos(f(x), f(v))` over views, and (with ``attributions``) the
    mean total-variation distance :math:`\tfrac12 \sum_g |s_g(x) - s_g(v)|` between the attribution
    shares (``attribution_shares``, ``n_steps`` points) of each view and of its cell, both with the
    cell's own embedding as anchor. The shares are computed with the encoder in eval mode (dropout
    off, BatchNorm on its running statistics, each row on its own, as at inference), then the
    encoder's mode is restored. The attribution term is 0 when a view spreads its attribution over
    the genes exactly as its cell does and 1 when they share no gene.
    """
    import torch

    n = full.shape[0]
    k = views.shape[0] // n
    z = encoder(torch.cat([views, full]))
    z_views, z_full = z[: k * n], z[k * n :]
    embed = (1 - (z_views * z_full.repeat(k, 1)).sum(dim=1)).mean()
    if not attributions:
        return z_views, embed, None
    was_training = encoder.training
    encoder.eval()
    try:
        anchor = encoder(full).detach()
        shares = attribution_shares(encoder, torch.cat([views, full]), anchor.repeat(k + 1, 1), n_steps)
    finally:
        encoder.train(was_training)
    s_views, s_full = shares[: k * n], shares[k * n :].repeat(k, 1)
    return z_views, embed, 0.5 * (s_views - s_full).abs().sum(dim=1).mean()
