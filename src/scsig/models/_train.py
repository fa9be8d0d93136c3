"""``sg.models.train_encoder``: train a compact SCimilarity-architecture encoder on raw counts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _logging as logg
from .._docs import doc_adata, doc_layer_counts, doc_mod, doc_params, doc_progress
from .._settings import settings
from .._utils import threads as _threads
from ._train_data import training_inputs
from ._train_losses import _augment, _normalize, contrastive_loss, depth_consistency_losses

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from scipy import sparse

    from ._base import FoundationModel

__all__ = ["train_encoder"]


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
    x, gene_order, overlap, ids, label_map = training_inputs(
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
        **_data_record(x, gene_order, overlap),
        **opts.record(),
        "seed": int(seed),
        "loss": losses,
        "seconds": round(seconds, 2),
    }
    logg.info(f"    finished: final loss {losses[-1]:.4f}", time=start)
    return model


def _data_record(x: sparse.csr_matrix, gene_order: Sequence[str], overlap: int) -> dict[str, int]:
    """How much data the encoder was trained on, for ``model.training``."""
    return {"n_cells": int(x.shape[0]), "n_genes": len(gene_order), "n_genes_in_data": overlap}


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
