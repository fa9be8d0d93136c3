"""``sg.models.from_scvi``: a live scvi-tools model (scVI, scANVI, ...), or its saved folder, as a model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._scvi_folder import load_scvi_folder
from ._scvi_model import ScviModel, _covariates_from_registry, _name_for, _preprocessing

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

__all__ = ["from_scvi"]


def from_scvi(
    model: Any, *, input: Literal["encoder", "model", "counts"] = "encoder", name: str | None = None
) -> ScviModel:
    r"""Wrap a trained scvi-tools model (scVI, scANVI, ...) for :func:`scsig.tl.attribute`.

    The attributed function is the latent mean (``qz.loc``) of the model's ``z_encoder`` as a
    function of the genes, in the model's gene order (its ``var_names``). When the encoder takes
    covariates (``encode_covariates=True``: batch, categorical and continuous covariates), each
    cell's own values, read from ``adata.obs`` through the model's registry, are held fixed;
    nothing is attributed to them. A batch level the model was not trained on is an error that
    lists the known levels. The library size is not an input of scVI's encoder.

    Parameters
    ----------
    model
        A trained scvi-tools model whose ``module`` has a ``z_encoder`` (SCVI, SCANVI and models
        built the same way), or the folder such a model was saved to (``model.pt``, read as
        :func:`scsig.models.load` does).
    input
        ``"encoder"`` (default): what scVI's encoder sees, :math:`\log(1 + \text{counts})` when
        the module has ``log_variational`` set (scVI's default), counts otherwise, with no
        library-size scaling; attributions are to those log1p values (the fast path applies).
        ``"model"``: the input is the counts and scVI's log1p is part of the attributed function,
        as when captum is run on the module's ``inference`` with counts (captum engine only).
        ``"counts"``: raw counts fed to the encoder without scVI's log1p, as sc-signature's
        ``SCVIWrapper`` does; use it only to reproduce that tool's numbers.
    name
        Identifier recorded in provenance; defaults to the model's class name in lower case.

    Returns
    -------
    The wrapped model (its weights are copied; the scvi-tools model is not changed).

    Examples
    --------
    >>> import scsig as sg
    >>> import scvi  # doctest: +SKIP
    >>> adata = sg.datasets.kang_muscat()  # doctest: +SKIP
    >>> scvi.model.SCVI.setup_anndata(adata, batch_key="sample_id")  # doctest: +SKIP
    >>> vae = scvi.model.SCVI(adata, encode_covariates=True)  # doctest: +SKIP
    >>> vae.train(max_epochs=10)  # doctest: +SKIP
    >>> model = sg.models.from_scvi(vae)  # doctest: +SKIP
    >>> sg.tl.attribute(adata, model)  # doctest: +SKIP
    """
    if isinstance(model, str | Path):
        return load_scvi_folder(model, name=name, input=input)
    module, z_encoder = _check_from_scvi_args(model)
    genes = _var_names(model)
    fc = z_encoder.encoder
    linears, posts = _live_blocks(fc)
    mean = z_encoder.mean_encoder
    head = (mean.weight, mean.bias)
    encode = bool(getattr(module, "encode_covariates", False))
    embedding = _live_batch_embedding(module) if encode else None
    cov = _covariates_from_registry(
        model.adata_manager.registry if getattr(model, "adata_manager", None) else model.registry_,
        encode=encode,
        deep=bool(fc.inject_covariates),
        batch_embedding=embedding,
    )
    model_class = type(model).__name__
    log_variational = bool(getattr(module, "log_variational", True))
    return ScviModel(
        [(w.detach().cpu(), None if b is None else b.detach().cpu()) for w, b in linears],
        posts,
        (head[0].detach().cpu(), None if head[1] is None else head[1].detach().cpu()),
        genes,
        cov,
        preprocessing=_preprocessing(log_variational=log_variational, input=input),
        name=_name_for(model_class, name),
        source=f"scvi-tools {model_class} object",
        model_class=model_class,
        log1p_inside=input == "model" and bool(log_variational),
    )


def _check_from_scvi_args(model: Any) -> tuple[Any, Any]:
    """Check that ``model`` is a trained scvi-tools model with an encoder; return its module and ``z_encoder``."""
    module = getattr(model, "module", None)
    z_encoder = getattr(module, "z_encoder", None)
    if z_encoder is None:
        msg = (
            f"{type(model).__name__} is not an scvi-tools model with an encoder (model.module.z_encoder); "
            "pass a trained SCVI, SCANVI or a model built the same way."
        )
        raise TypeError(msg)
    if not getattr(model, "is_trained_", getattr(model, "is_trained", True)):
        msg = f"This {type(model).__name__} was never trained; call model.train() first (an untrained encoder's attributions are noise)."
        raise ValueError(msg)
    return module, z_encoder


def _live_blocks(fc: Any) -> tuple[list[tuple[Any, Any]], list[list[nn.Module]]]:
    """The (weight, bias) of each block's Linear and eval-mode copies of the layers after it."""
    import torch

    linears, posts = [], []
    for block in fc.fc_layers:
        mods = [m for m in block if m is not None]
        if not isinstance(mods[0], torch.nn.Linear):
            msg = f"Unexpected scvi-tools encoder layout: a block starts with {type(mods[0]).__name__}, not Linear."
            raise TypeError(msg)
        linears.append((mods[0].weight, mods[0].bias))
        posts.append([_copy_eval(m) for m in mods[1:]])
    return linears, posts


def _live_batch_embedding(module: Any) -> np.ndarray | None:
    """The batch embedding table (levels x dimensions) of a module that embeds its batch, else ``None``."""
    if getattr(module, "batch_representation", "one-hot") != "embedding":
        return None
    import torch
    from scvi import REGISTRY_KEYS

    n_batch = int(module.n_batch)
    with torch.no_grad():
        return (
            module.compute_embedding(REGISTRY_KEYS.BATCH_KEY, torch.arange(n_batch).reshape(-1, 1))
            .reshape(n_batch, -1)
            .float()
            .cpu()
            .numpy()
        )


def _copy_eval(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m).cpu().eval()


def _var_names(model: Any) -> list[str]:
    adata = getattr(model, "adata", None)
    if adata is not None:
        return [str(g) for g in adata.var_names]
    names = getattr(model, "_var_names", None) or getattr(model, "var_names", None)
    if names is not None:
        return [str(g) for g in names]
    msg = "The scvi-tools model has no AnnData attached and no var_names; load it with its data (or pass its saved folder)."
    raise ValueError(msg)
