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
    "orthologs",
    "registry",
    "save_safetensors",
    "train_encoder",
]


def __getattr__(name: str) -> Any:
    # the encoder class subclasses torch.nn.Module: importing it imports torch, so only on first use
    if name == "SCimilarityEncoder":
        from ._scimilarity import SCimilarityEncoder

        return SCimilarityEncoder
    msg = f"module 'scsig.models' has no attribute {name!r}"
    raise AttributeError(msg)
