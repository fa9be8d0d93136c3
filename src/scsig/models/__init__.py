"""Foundation models: loaders for published checkpoints and wrappers for any torch encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import FoundationModel, Preprocessing, from_module, gene_order_hash
from ._cross_species import CrossSpeciesModel
from ._cross_species_fit import cross_species, fit_conversion
from ._load import load
from ._orthologs import orthologs
from ._registry import registry
from ._safetensors import save_safetensors
from ._scvi import from_scvi
from ._train import train_encoder

if TYPE_CHECKING:
    from ._bmfm import load_bmfm
    from ._scfoundation import load_scfoundation
    from ._scgpt import load_scgpt
    from ._scimilarity import SCimilarityEncoder

__all__ = [
    "CrossSpeciesModel",
    "FoundationModel",
    "Preprocessing",
    "SCimilarityEncoder",
    "cross_species",
    "fit_conversion",
    "from_module",
    "from_scvi",
    "gene_order_hash",
    "load",
    "load_bmfm",
    "load_scfoundation",
    "load_scgpt",
    "orthologs",
    "registry",
    "save_safetensors",
    "train_encoder",
]


_TOKEN_LOADERS = {"load_bmfm": "._bmfm", "load_scfoundation": "._scfoundation", "load_scgpt": "._scgpt"}


def __getattr__(name: str) -> Any:
    # the encoder classes subclass torch.nn.Module: importing them imports torch, so only on first use
    if name == "SCimilarityEncoder":
        from ._scimilarity import SCimilarityEncoder

        return SCimilarityEncoder
    if name in _TOKEN_LOADERS:
        from importlib import import_module

        return getattr(import_module(_TOKEN_LOADERS[name], __name__), name)
    msg = f"module 'scsig.models' has no attribute {name!r}"
    raise AttributeError(msg)
