"""Making cross-species models (:func:`cross_species`) and learning their conversion (:func:`fit_conversion`).

These build on the loaders (a model may be given by name) and on the cross-species model type in
:mod:`scsig.models._cross_species`.
"""

from __future__ import annotations

import copy as _copy
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._docs import doc_params, doc_progress
from .._utils._warn import user_stacklevel
from ._base import FoundationModel
from ._conversion import conversion_matrix
from ._cross_species import CrossSpeciesModel
from ._load import load
from ._orthologs import DEFAULT_TABLE, resolve_table

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

    from ._orthologs import OrthologTable, TableName

__all__ = ["cross_species", "fit_conversion"]


def cross_species(
    model: FoundationModel | str,
    *,
    species: str = "mouse",
    orthologs: TableName | str | pd.DataFrame | OrthologTable | None = DEFAULT_TABLE,
    model_species: str = "human",
    rule: Literal["mean", "split"] = "mean",
    name: str | None = None,
) -> CrossSpeciesModel:
    r"""Make a model of one species take cells of another, through ortholog genes.

    The result is a :class:`~scsig.models.FoundationModel` whose ``gene_order`` is the ``species``
    genes that have an ortholog among ``model``'s genes. Its first operation converts a cell into the
    model's genes with a linear map :math:`C` (model genes x source genes) whose non-zero pattern is
    the ortholog graph: a one-to-one ortholog is copied with weight 1. What several orthologs do is
    set by ``rule``:

    ``"mean"`` (default)
        A model gene with several source orthologs receives their mean (weights :math:`1/k`); a
        source gene with several model orthologs is copied to each of them in full. Every model
        gene's input stays on the scale of one gene.
    ``"split"``
        A source gene with :math:`k` model orthologs gives each :math:`1/k` of its value; a model
        gene with several source orthologs receives the sum. The total over the genes is kept.

    The cells are normalized by the model's own recipe over the cross-species model's genes, then
    converted (:math:`C` acts on normalized values, so it folds into the encoder's first affine
    layer, :math:`W_1 \to W_1 C`, and the fast attribution path applies unchanged). With one-to-one
    orthologs only, this is exactly the model applied to the data with its genes renamed to their
    orthologs. Attributions land on the data's (source-species) genes.

    Parameters
    ----------
    model
        The pretrained model (or a name or folder that :func:`scsig.models.load` reads).
    species
        The species of the data.
    orthologs
        The ortholog table: the name of a bundled human-mouse table, ``"mgi2024"`` (default; MGI,
        December 2024), ``"hcop2024"`` (HGNC HCOP, pairs supported by at least 3 of 12 databases) or
        ``"ensembl105"`` (Ensembl 105, for data annotated with symbols of that time; the default before),
        see :func:`scsig.models.orthologs`; or a DataFrame of ortholog pairs with columns ``source``
        (``species`` genes) and ``target`` (``model_species`` genes, named as in the model's gene order),
        or with columns named after the two species. ``None`` is the default table.
    model_species
        The species the model was trained on.
    rule
        What several orthologs do, ``"mean"`` or ``"split"`` (above).
    name
        Identifier recorded in provenance; default ``f"{model.name}@{species}"``.

    Returns
    -------
    The cross-species model. It attributes and scores like any model, :meth:`~CrossSpeciesModel.save`
    writes it and :func:`scsig.models.load` reads it back; ``adata.uns["scsig"]["layers"][key]["model"]
    ["cross_species"]`` records the species, the table (name and checksum), the rule and the base model.

    Examples
    --------
    >>> import scsig as sg
    >>> xmodel = sg.models.cross_species(sg.models.load("pbmc-demo"), species="mouse")
    >>> xmodel.gene_order[:3], xmodel.base.n_genes
    (['Noc2l', 'Isg15', 'Tnfrsf4'], 4692)
    """
    if not isinstance(model, FoundationModel):
        model = load(model)
    if isinstance(model, CrossSpeciesModel):
        msg = "model is already a cross-species model; pass its pretrained model (model.base) instead."
        raise TypeError(msg)
    if str(species).lower() == str(model_species).lower():
        msg = f"species={species!r} is the model's own species; use the model directly."
        raise ValueError(msg)
    table = resolve_table(orthologs, source_species=species, target_species=model_species)
    conv, genes = conversion_matrix(table, model.gene_order, rule=rule)
    n_reached = int(np.diff(conv.indptr).astype(bool).sum())
    if n_reached < 0.5 * model.n_genes:
        warnings.warn(
            f"Only {n_reached} of the model's {model.n_genes} genes have a {species} ortholog in the table "
            f"{table.name!r}; the other genes are zeros for every {species} cell.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return CrossSpeciesModel(model, conv, genes, table, rule=rule, name=name)


@doc_params(doc_progress=doc_progress)
def fit_conversion(
    model: CrossSpeciesModel,
    adata: AnnData,
    *,
    labels: str,
    layer: str | None = None,
    gene_symbols: str | None = None,
    l2: float = 1.0,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 256,
    rng: int = 0,
    progress: bool | None = None,
) -> tuple[CrossSpeciesModel, pd.DataFrame]:
    r"""Learn the conversion's weights on labeled cells of the data's species (TRON).

    Transfer-orthology learning: the pretrained encoder stays frozen; only the conversion's non-zero
    entries (the ortholog pairs, initialized at the orthology map :math:`C_0`) are learned, together
    with a linear classifier on the embedding. The loss is the classifier's cross-entropy on the
    cells' ``labels`` plus :math:`\lambda \lVert C - C_0 \rVert^2 / n_\mathrm{pairs}` (``l2``) that
    keeps the weights near the orthology; Adam, full passes over the cells in shuffled batches. The
    classifier is discarded; the learned conversion is folded into a new model.

    Whether it helps must be measured on held-out cells: pass only training cells here.

    Parameters
    ----------
    model
        A cross-species model from :func:`scsig.models.cross_species`.
    adata
        Raw counts of labeled cells of the model's source species.
    labels
        Column of ``adata.obs`` with the cells' labels (cells with a missing label are not used).
    layer
        Layer with the counts; ``None`` uses ``adata.X``.
    gene_symbols
        Column of ``adata.var`` with the gene names, when ``var_names`` differ.
    l2
        Weight :math:`\lambda` of the pull toward the orthology map.
    epochs, lr, batch_size
        Passes over the cells, Adam's learning rate, cells per step.
    rng
        Seed of the classifier's initialization and the shuffling.
    {doc_progress}

    Returns
    -------
    The model with the learned conversion, and a DataFrame of the ortholog pairs (``source``,
    ``target``, ``relationship``, ``initial`` and learned ``weight``, ``change``) sorted by the size of the change;
    its ``attrs["loss_history"]`` holds the mean loss of each epoch. The weights are not constrained
    in sign. The fit's settings are recorded in the model's provenance (``describe()["cross_species"]["fit"]``).

    Examples
    --------
    >>> import scsig as sg
    >>> xmodel = sg.models.cross_species("pbmc-demo", species="mouse")
    >>> learned, pairs = sg.models.fit_conversion(xmodel, mouse_adata, labels="cell_type")  # doctest: +SKIP
    """
    from .._settings import settings

    _check_fit_conversion_args(model, adata, labels=labels, l2=l2, lr=lr, epochs=epochs, batch_size=batch_size)
    x, y, classes = _labeled_input(model, adata, labels=labels, layer=layer, gene_symbols=gene_symbols)
    show = settings.progress if progress is None else progress
    learned_w, history = _learn_conversion(
        model, x, y, len(classes), l2=l2, epochs=epochs, lr=lr, batch_size=batch_size, rng=rng, show=show
    )
    coo = model.conversion.tocoo()
    conv = sparse.csr_matrix((learned_w, (coo.row, coo.col)), shape=model.conversion.shape)
    fit = {
        "labels": labels,
        "n_cells": int(x.shape[0]),
        "classes": [str(c) for c in classes],
        "l2": float(l2),
        "epochs": int(epochs),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "rng": int(rng),
        "final_loss": float(history[-1]),
    }
    learned = CrossSpeciesModel(
        model.base,
        conv,
        model.gene_order,
        model.table,
        rule=model.rule,
        name=f"{model.name}+fit",
        initial=model.initial,
        fit=fit,
    )
    pairs = learned.pairs()
    pairs["change"] = pairs["weight"] - pairs["initial"]
    pairs = pairs.reindex(pairs["change"].abs().sort_values(ascending=False, kind="stable").index)
    pairs.attrs["loss_history"] = history
    return learned, pairs.reset_index(drop=True)


def _check_fit_conversion_args(
    model: Any, adata: AnnData, *, labels: str, l2: float, lr: float, epochs: int, batch_size: int
) -> None:
    """Check the arguments of :func:`fit_conversion`."""
    if not isinstance(model, CrossSpeciesModel):
        msg = f"fit_conversion needs a cross-species model from sg.models.cross_species, not {type(model).__name__}."
        raise TypeError(msg)
    if labels not in adata.obs.columns:
        msg = f"labels={labels!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
        raise KeyError(msg)
    for key, value in (("l2", l2), ("lr", lr)):
        if not (np.isfinite(value) and value >= 0):
            msg = f"{key} must be a non-negative number, got {value!r}."
            raise ValueError(msg)
    if epochs < 1 or batch_size < 1:
        msg = f"epochs and batch_size must be positive, got {epochs} and {batch_size}."
        raise ValueError(msg)


def _labeled_input(
    model: CrossSpeciesModel, adata: AnnData, *, labels: str, layer: str | None, gene_symbols: str | None
) -> tuple[sparse.csr_matrix, torch.Tensor, pd.Index]:
    """The model input of the labeled cells of :func:`fit_conversion`, their class indices and the classes."""
    import torch

    from .._utils import get_matrix
    from ._align import align_genes, model_input

    y_raw = adata.obs[labels]
    keep = y_raw.notna().to_numpy()
    classes = pd.Index(pd.unique(y_raw[keep].astype(str))).sort_values()
    if len(classes) < 2:
        msg = f"adata.obs[{labels!r}] needs at least two labels to learn from; it has {list(classes)}."
        raise ValueError(msg)
    y = torch.as_tensor(classes.get_indexer(y_raw[keep].astype(str)), dtype=torch.int64)

    alignment = align_genes(adata, model, gene_symbols=gene_symbols)
    x, _ = model_input(get_matrix(adata, layer)[np.flatnonzero(keep)], alignment, model)
    return sparse.csr_matrix(x), y, classes


def _learn_conversion(
    model: CrossSpeciesModel,
    x: sparse.csr_matrix,
    y: torch.Tensor,
    n_classes: int,
    *,
    l2: float,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: int,
    show: bool,
) -> tuple[np.ndarray, list[float]]:
    """The training loop of :func:`fit_conversion`.

    Returns the learned weights of the conversion's non-zero entries (in the order of
    ``model.conversion.tocoo()``) and the mean loss of each epoch.
    """
    import torch
    from torch import nn

    from .._utils._progress import tqdm

    gen = torch.Generator().manual_seed(int(rng))
    torch.manual_seed(int(rng))
    coo = model.conversion.tocoo()
    rows = torch.as_tensor(coo.row, dtype=torch.int64)
    cols = torch.as_tensor(coo.col, dtype=torch.int64)
    start_w = torch.as_tensor(coo.data, dtype=torch.float32)
    init_w = torch.as_tensor(np.asarray(model.initial[coo.row, coo.col]).ravel(), dtype=torch.float32)
    weights = nn.Parameter(start_w.clone())
    encoder = _copy.deepcopy(model.base.encoder).eval()
    for p in encoder.parameters():
        p.requires_grad_(requires_grad=False)
    with torch.no_grad():
        latent = encoder(torch.zeros(2, model.base.n_genes)).shape[1]
    head = nn.Linear(latent, n_classes)
    optimizer = torch.optim.Adam([weights, *head.parameters()], lr=lr)
    n_model = model.base.n_genes
    n_pairs = max(1, int(coo.nnz))

    def embed(batch: torch.Tensor) -> torch.Tensor:
        converted = batch.new_zeros((batch.shape[0], n_model)).index_add(1, rows, batch[:, cols] * weights)
        return encoder(converted)

    history = []
    n = x.shape[0]
    for _ in tqdm(range(epochs), disable=not show, desc="fit conversion", unit="epoch"):
        order = torch.randperm(n, generator=gen).numpy()
        total = 0.0
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            batch = torch.as_tensor(x[idx].toarray(), dtype=torch.float32)
            logits = head(embed(batch))
            loss = nn.functional.cross_entropy(logits, y[idx])
            loss = loss + l2 * ((weights - init_w) ** 2).sum() / n_pairs
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        history.append(total / n)
    return weights.detach().double().numpy(), history
