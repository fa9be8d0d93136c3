"""``sg.models.train_encoder``: train a compact SCimilarity-architecture encoder on raw counts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _logging as logg
from .._docs import doc_adata, doc_layer_counts, doc_mod, doc_params, doc_progress
from .._settings import settings
from .._utils import get_matrix, resolve_adata, to_memory
from .._utils import threads as _threads
from .._utils._validate import check_counts as _check_counts
from .._utils._validate import check_unique

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from anndata import AnnData

    from ._base import FoundationModel

__all__ = ["attribution_shares", "depth_consistency_losses", "select_genes", "train_encoder"]


def select_genes(
    adata: AnnData,
    *,
    layer: str | None = None,
    min_cells: int = 3,
    n_top_genes: int | None = 2000,
    gene_symbols: str | None = None,
) -> list[str]:
    """The default gene order of :func:`train_encoder`: detected genes, optionally the most variable.

    Genes detected (count > 0) in at least ``min_cells`` cells are kept. With ``n_top_genes``, the
    ``n_top_genes`` most variable of those are chosen by :func:`scanpy.pp.highly_variable_genes`
    (``flavor="seurat"``, on counts scaled to 10,000 per cell and log1p-transformed). The genes
    are returned in the data's order.

    Parameters
    ----------
    adata
        Raw counts.
    layer
        Layer holding the counts; ``None`` reads ``X``.
    min_cells
        Fewest cells a gene must be detected in.
    n_top_genes
        Number of highly variable genes to keep; ``None`` keeps every detected gene.
    gene_symbols
        Column of ``adata.var`` with the names to return; ``None`` returns ``var_names``.

    Returns
    -------
    The gene names.
    """
    counts = to_memory(get_matrix(adata, layer))
    names = pd.Index(adata.var_names if gene_symbols is None else adata.var[gene_symbols]).astype(str)
    detected = np.asarray((counts > 0).sum(axis=0)).ravel() >= min_cells
    if n_top_genes is None or n_top_genes >= int(detected.sum()):
        return names[detected].tolist()
    import anndata as ad
    import scanpy as sc

    sub = sparse.csr_matrix(counts, dtype=np.float32)[:, np.flatnonzero(detected)]
    tmp = ad.AnnData(X=sub)
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, n_top_genes=int(n_top_genes), flavor="seurat")
    keep = np.flatnonzero(detected)[tmp.var["highly_variable"].to_numpy()]
    return names[np.sort(keep)].tolist()


def _aligned_counts(
    adata: AnnData, counts: Any, gene_order: Sequence[str], gene_symbols: str | None
) -> tuple[sparse.csr_matrix, int]:
    """Counts in ``gene_order`` (CSR float32; genes the data lacks are zero columns) and the overlap."""
    names = pd.Index(adata.var_names if gene_symbols is None else adata.var[gene_symbols]).astype(str)
    check_unique(
        names,
        what="adata.var_names" if gene_symbols is None else f"adata.var[{gene_symbols!r}]",
        fix="Make them unique (e.g. `adata.var_names_make_unique()`) before training.",
    )
    check_unique(list(gene_order), what="gene_order", fix="Each gene may appear once.")
    pos = names.get_indexer(list(gene_order))
    found = np.flatnonzero(pos >= 0)
    proj = sparse.csr_matrix(
        (np.ones(found.size, dtype=np.float32), (pos[found], found)), shape=(len(names), len(gene_order))
    )
    out = sparse.csr_matrix(sparse.csr_matrix(counts, dtype=np.float32) @ proj)
    out.sort_indices()
    return out, int(found.size)


def _label_ids(adata: AnnData, labels: str | None) -> tuple[np.ndarray, dict[int, str] | None]:
    """Integer id per cell for the contrastive positives, and the label map (``None`` without labels).

    Without labels every cell is its own class. Cells whose label is missing get ids of their own
    (after the label codes), so they only pair with their other view.
    """
    n = adata.n_obs
    if labels is None:
        return np.arange(n), None
    if labels not in adata.obs.columns:
        msg = f"labels={labels!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
        raise KeyError(msg)
    cat = pd.Categorical(adata.obs[labels])
    codes = np.asarray(cat.codes, dtype=np.int64)
    if len(cat.categories) < 2:
        msg = f"adata.obs[{labels!r}] has {len(cat.categories)} distinct label(s); metric learning needs at least 2."
        raise ValueError(msg)
    missing = codes < 0
    codes[missing] = len(cat.categories) + np.arange(int(missing.sum()))
    return codes, {i: str(c) for i, c in enumerate(cat.categories)}


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


def _recalibrate_batchnorm(encoder: torch.nn.Module, x: sparse.csr_matrix, batch_size: int, target_sum: float) -> None:
    """Set BatchNorm running statistics to the exact mean and variance of their inputs on unaugmented cells.

    Training sees augmented views, so the running statistics gathered then describe thinned,
    gene-dropped input; the model is applied to unaugmented cells. The layers are calibrated in
    order, in eval mode, so each BatchNorm sees its input as it will be at inference (earlier
    layers already calibrated). Variances are unbiased, as torch's running estimates.
    """
    import torch

    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    encoder.eval()
    for norm in norms:
        acc = {"n": 0, "sum": 0.0, "sumsq": 0.0}

        def collect(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], acc: dict = acc) -> None:
            h = inputs[0].to(torch.float64)
            acc["n"] += h.shape[0]
            acc["sum"] = acc["sum"] + h.sum(dim=0)
            acc["sumsq"] = acc["sumsq"] + (h * h).sum(dim=0)

        handle = norm.register_forward_pre_hook(collect)
        try:
            with torch.no_grad():
                for lo in range(0, x.shape[0], batch_size):
                    encoder(_normalize(torch.as_tensor(x[lo : lo + batch_size].toarray()), target_sum))
        finally:
            handle.remove()
        n = acc["n"]
        if n < 2:
            continue
        mean = acc["sum"] / n
        var = (acc["sumsq"] - n * mean * mean).clamp_min(0) / (n - 1)
        with torch.no_grad():
            norm.running_mean.copy_(mean.to(norm.running_mean.dtype))
            norm.running_var.copy_(var.to(norm.running_var.dtype))


@doc_params(doc_adata=doc_adata, doc_layer_counts=doc_layer_counts, doc_mod=doc_mod, doc_progress=doc_progress)
def train_encoder(
    adata: Any,
    *,
    labels: str | None = None,
    layer: str | None = None,
    gene_order: Sequence[str] | None = None,
    n_top_genes: int | None = 2000,
    min_cells: int = 3,
    gene_symbols: str | None = None,
    hidden: Sequence[int] = (256, 128),
    latent: int = 64,
    dropout: float = 0.2,
    input_dropout: float = 0.2,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    temperature: float = 0.1,
    thinning: tuple[float, float] = (0.3, 1.0),
    gene_dropout: float = 0.2,
    consistency: float = 0.0,
    attribution_consistency: float = 0.0,
    attribution_steps: int = 4,
    seed: int = 0,
    name: str = "trained-encoder",
    check_counts: bool = True,
    progress: bool | None = None,
    mod: str = "rna",
) -> FoundationModel:
    r"""Train a compact SCimilarity-style encoder on raw counts, on the CPU.

    The encoder is a :class:`~scsig.models.SCimilarityEncoder` (blocks of
    ``Dropout -> Linear -> BatchNorm1d -> PReLU``, a final ``Linear``, L2-normalized output), so it
    loads, saves and attributes like a published SCimilarity model. Its input is SCimilarity's
    recipe: counts in the model's gene order, scaled to 10,000 per cell over those genes, then
    ``log1p`` (:func:`scsig.pp.prepare` applies the same recipe later).

    Each step draws a batch of cells and makes two random views of each from its *counts*:
    binomial thinning to a random fraction of its depth (drawn uniformly from ``thinning``, per
    cell) and random gene dropout (each count set to 0 with probability ``gene_dropout``). The
    views are normalized and embedded, and a supervised contrastive loss
    (``contrastive_loss``, temperature ``temperature``) pulls together

    - with ``labels``: all cells sharing a label (metric learning on cell types, as SCimilarity);
    - without: only the two views of the same cell (self-supervised, as SimCLR).

    AdamW with a cosine learning-rate decay is used. After training, the BatchNorm running
    statistics are recomputed on the unaugmented cells. Everything (gene selection, shuffling,
    augmentation, dropout, initialization) follows ``seed``: the same data, options, seed and torch
    build give the same weights.

    Parameters
    ----------
    {doc_adata}
    labels
        Column of ``adata.obs`` with cell labels for metric learning; ``None`` trains
        self-supervised. Cells with a missing label only pair with their own other view.
    {doc_layer_counts}
    gene_order
        The model's input genes, in order. Genes the data lacks are allowed (their input is
        always 0). ``None`` selects genes with ``select_genes`` (``min_cells``, ``n_top_genes``).
    n_top_genes
        With ``gene_order=None``: keep this many highly variable genes; ``None`` keeps every gene
        detected in ``min_cells`` cells.
    min_cells
        With ``gene_order=None``: fewest cells a gene must be detected in.
    gene_symbols
        Column of ``adata.var`` with the gene names to use instead of ``var_names``.
    hidden
        Hidden layer widths.
    latent
        Embedding size.
    dropout
        Dropout of the hidden blocks during training.
    input_dropout
        Dropout on the normalized input during training.
    epochs
        Passes over the cells.
    batch_size
        Cells per step (each contributes two views). The last, smaller batch is kept unless it has
        a single cell.
    lr
        Peak learning rate of AdamW.
    weight_decay
        AdamW weight decay.
    temperature
        Temperature :math:`\tau` of the contrastive loss.
    thinning
        Range of the fraction of counts each view keeps; ``(1.0, 1.0)`` turns thinning off.
    gene_dropout
        Probability that a view loses a gene's counts.
    consistency
        Weight of a depth-consistency term added to the loss: the mean of
        :math:`1 - \cos(f(x), f(v))` between each cell at full depth (no augmentation) and its two
        views (see ``depth_consistency_losses``). 0 (the default) leaves it out.
    attribution_consistency
        Weight of a term on the attributions themselves: the total-variation distance between the
        input x gradient attribution shares of each cell at full depth and of its views (the
        self-similarity target of :func:`scsig.tl.attribute`, integrated gradients with
        ``attribution_steps`` midpoint steps; see ``depth_consistency_losses``). It asks a thinned
        cell to spread its attribution over its genes as the full cell does, so attribution shares
        (and scores) depend less on depth. It needs ``attribution_steps`` extra forward passes and
        a second backward pass, several times the training time. 0 (the default) leaves it out.
    attribution_steps
        Steps of the integrated-gradient approximation of ``attribution_consistency``.
    seed
        Seed of every random choice; torch's global random state is left as it was.
    name
        Name of the returned model (recorded in provenance).
    check_counts
        Refuse input that is not raw counts.
    {doc_progress}
    {doc_mod}

    Returns
    -------
    A :class:`~scsig.models.FoundationModel` in eval mode with SCimilarity preprocessing. Its
    ``labels`` map label index -> label (when trained with labels), and ``model.training`` is a
    dict with the options used, the number of cells and genes, ``"loss"`` (mean loss per epoch)
    and ``"seconds"``. ``adata`` is not changed.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, _ = sg.datasets.toy()
    >>> model = sg.models.train_encoder(adata, labels="group", n_top_genes=None, epochs=2, progress=False)
    >>> model.n_genes, len(model.training["loss"])
    (40, 2)
    """
    from ._base import SCIMILARITY_PREPROCESSING, FoundationModel

    opts = _check_train_encoder_args(
        hidden=hidden,
        latent=latent,
        dropout=dropout,
        input_dropout=input_dropout,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        temperature=temperature,
        thinning=thinning,
        gene_dropout=gene_dropout,
        consistency=consistency,
        attribution_consistency=attribution_consistency,
        attribution_steps=attribution_steps,
    )
    x, gene_order, overlap, ids, label_map = _training_inputs(
        adata,
        labels=labels,
        layer=layer,
        gene_order=gene_order,
        n_top_genes=n_top_genes,
        min_cells=min_cells,
        gene_symbols=gene_symbols,
        check_counts=check_counts,
        mod=mod,
    )
    target_sum = float(SCIMILARITY_PREPROCESSING.target_sum)
    start = logg.info(
        f"training a {len(gene_order)}-gene encoder on {x.shape[0]} cells "
        f"({'labels ' + repr(labels) if labels else 'self-supervised'}, {epochs} epochs)"
    )
    t0 = time.perf_counter()
    show = settings.progress if progress is None else progress
    encoder, losses = _train_seeded(len(gene_order), x, ids, opts, seed=seed, target_sum=target_sum, show=show)
    seconds = time.perf_counter() - t0

    model = FoundationModel(
        encoder,
        gene_order,
        preprocessing=SCIMILARITY_PREPROCESSING,
        name=name,
        labels=label_map,
        source="scsig.models.train_encoder",
    )
    model.training = {
        "labels": labels if labels is not None else "none (self-supervised)",
        "n_cells": int(x.shape[0]),
        "n_genes": len(gene_order),
        "n_genes_in_data": overlap,
        **opts.record(),
        "seed": int(seed),
        "loss": losses,
        "seconds": round(seconds, 2),
    }
    logg.info(f"    finished: final loss {losses[-1]:.4f}", time=start)
    return model


@dataclass(frozen=True)
class _TrainOptions:
    """The checked training options of :func:`train_encoder`, as given (``thinning`` as floats)."""

    hidden: Sequence[int]
    latent: int
    dropout: float
    input_dropout: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    temperature: float
    thinning: tuple[float, float]
    gene_dropout: float
    consistency: float
    attribution_consistency: float
    attribution_steps: int

    def record(self) -> dict[str, Any]:
        """The options as plain numbers and lists, for ``model.training``."""
        return {
            "hidden": [int(h) for h in self.hidden],
            "latent": int(self.latent),
            "dropout": float(self.dropout),
            "input_dropout": float(self.input_dropout),
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "lr": float(self.lr),
            "weight_decay": float(self.weight_decay),
            "temperature": float(self.temperature),
            "thinning": list(self.thinning),
            "gene_dropout": float(self.gene_dropout),
            "consistency": float(self.consistency),
            "attribution_consistency": float(self.attribution_consistency),
            "attribution_steps": int(self.attribution_steps),
        }


def _check_train_encoder_args(
    *,
    hidden: Sequence[int],
    latent: int,
    dropout: float,
    input_dropout: float,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    temperature: float,
    thinning: tuple[float, float],
    gene_dropout: float,
    consistency: float,
    attribution_consistency: float,
    attribution_steps: int,
) -> _TrainOptions:
    """Check the training options of :func:`train_encoder` and bundle them."""
    lo_thin, hi_thin = (float(v) for v in thinning)
    if not 0 < lo_thin <= hi_thin <= 1:
        msg = f"thinning must be (low, high) with 0 < low <= high <= 1, got {thinning!r}."
        raise ValueError(msg)
    for label, value in (("gene_dropout", gene_dropout), ("dropout", dropout), ("input_dropout", input_dropout)):
        if not 0 <= value < 1:
            msg = f"{label} must be in [0, 1), got {value!r}."
            raise ValueError(msg)
    for label, value in (("consistency", consistency), ("attribution_consistency", attribution_consistency)):
        if not (isinstance(value, int | float) and np.isfinite(value) and value >= 0):
            msg = f"{label} must be a finite number >= 0, got {value!r}."
            raise ValueError(msg)
    if isinstance(attribution_steps, bool) or not isinstance(attribution_steps, int) or attribution_steps < 1:
        msg = f"attribution_steps must be a positive integer, got {attribution_steps!r}."
        raise ValueError(msg)
    if epochs < 1 or batch_size < 2:
        msg = f"epochs must be >= 1 and batch_size >= 2 (BatchNorm needs 2 cells), got {epochs} and {batch_size}."
        raise ValueError(msg)
    return _TrainOptions(
        hidden=hidden,
        latent=latent,
        dropout=dropout,
        input_dropout=input_dropout,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        temperature=temperature,
        thinning=(lo_thin, hi_thin),
        gene_dropout=gene_dropout,
        consistency=consistency,
        attribution_consistency=attribution_consistency,
        attribution_steps=attribution_steps,
    )


def _training_inputs(
    adata: Any,
    *,
    labels: str | None,
    layer: str | None,
    gene_order: Sequence[str] | None,
    n_top_genes: int | None,
    min_cells: int,
    gene_symbols: str | None,
    check_counts: bool,
    mod: str,
) -> tuple[sparse.csr_matrix, list[str], int, np.ndarray, dict[int, str] | None]:
    """Check and read the training data of :func:`train_encoder`.

    Returns the counts aligned to the gene order, the gene order, how many of its genes the data
    has, the label index of each cell and the label map.
    """
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    if gene_symbols is not None and gene_symbols not in data.var.columns:
        msg = f"gene_symbols={gene_symbols!r} is not a column of adata.var (columns: {list(data.var.columns)})."
        raise KeyError(msg)
    counts = to_memory(get_matrix(data, layer))  # training reads every cell
    if check_counts:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        _check_counts(counts, where=where)
    if data.n_obs < 2:
        msg = f"Training needs at least 2 cells, got {data.n_obs}."
        raise ValueError(msg)
    if gene_order is None:
        gene_order = select_genes(
            data, layer=layer, min_cells=min_cells, n_top_genes=n_top_genes, gene_symbols=gene_symbols
        )
    gene_order = [str(g) for g in gene_order]
    x, overlap = _aligned_counts(data, counts, gene_order, gene_symbols)
    if overlap == 0:
        msg = f"None of the {len(gene_order)} genes of gene_order is in the data (first: {gene_order[:3]})."
        raise ValueError(msg)
    ids, label_map = _label_ids(data, labels)
    return x, gene_order, overlap, ids, label_map


def _train_seeded(
    n_genes: int,
    x: sparse.csr_matrix,
    ids: np.ndarray,
    opts: _TrainOptions,
    *,
    seed: int,
    target_sum: float,
    show: bool,
) -> tuple[torch.nn.Module, list[float]]:
    """Build and train the encoder under ``seed``, leaving torch's global random state as it was.

    Returns the encoder, its BatchNorm statistics recomputed on ``x``, and the mean loss per epoch.
    """
    import torch

    from ._scimilarity import SCimilarityEncoder

    with _threads(settings.n_jobs), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        encoder = SCimilarityEncoder(
            n_genes, opts.hidden, opts.latent, dropout=float(opts.dropout), input_dropout=float(opts.input_dropout)
        )
        losses = _fit_encoder(encoder, x, ids, opts, gen=gen, target_sum=target_sum, show=show)
        _recalibrate_batchnorm(encoder, x, max(opts.batch_size, 2), target_sum)
    return encoder, losses


def _fit_encoder(
    encoder: torch.nn.Module,
    x: sparse.csr_matrix,
    ids: np.ndarray,
    opts: _TrainOptions,
    *,
    gen: torch.Generator,
    target_sum: float,
    show: bool,
) -> list[float]:
    """The training loop of :func:`train_encoder` (AdamW, cosine decay); return the mean loss per epoch."""
    import torch

    from .._utils._progress import tqdm

    n, batch_size, epochs = x.shape[0], opts.batch_size, opts.epochs
    steps_per_epoch = max(1, sum(1 for lo in range(0, n, batch_size) if min(batch_size, n - lo) >= 2))
    optim = torch.optim.AdamW(encoder.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=epochs * steps_per_epoch)
    ids_t = torch.as_tensor(ids)
    losses: list[float] = []
    encoder.train()
    with tqdm(range(epochs), disable=not show, desc="train encoder", unit="epoch") as bar:
        for _ in bar:
            order = torch.randperm(n, generator=gen).numpy()
            total, seen = 0.0, 0
            for lo in range(0, n, batch_size):
                idx = order[lo : lo + batch_size]
                if idx.size < 2:
                    continue
                batch = torch.as_tensor(x[idx].toarray())
                views = [
                    _augment(batch, thinning=opts.thinning, gene_dropout=opts.gene_dropout, gen=gen) for _ in range(2)
                ]
                loss = _batch_loss(encoder, batch, views, ids_t[torch.as_tensor(idx)], opts, target_sum=target_sum)
                optim.zero_grad()
                loss.backward()
                optim.step()
                sched.step()
                total += float(loss.detach()) * idx.size
                seen += idx.size
            losses.append(total / max(seen, 1))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def _batch_loss(
    encoder: torch.nn.Module,
    batch: torch.Tensor,
    views: list[torch.Tensor],
    bid: torch.Tensor,
    opts: _TrainOptions,
    *,
    target_sum: float,
) -> torch.Tensor:
    """The training loss of one batch: contrastive, plus the optional depth-consistency terms."""
    import torch

    if opts.consistency > 0 or opts.attribution_consistency > 0:
        z, embed, attr = depth_consistency_losses(
            encoder,
            _normalize(torch.cat(views), target_sum),
            _normalize(batch, target_sum),
            attributions=opts.attribution_consistency > 0,
            n_steps=int(opts.attribution_steps),
        )
        loss = contrastive_loss(z, torch.cat([bid, bid]), opts.temperature) + opts.consistency * embed
        if attr is not None:
            loss = loss + opts.attribution_consistency * attr
        return loss
    z = encoder(_normalize(torch.cat(views), target_sum))
    return contrastive_loss(z, torch.cat([bid, bid]), opts.temperature)
