"""Foundation models: loaders for published checkpoints and wrappers for any torch encoder."""

from __future__ import annotations

from ._base import FoundationModel, Preprocessing, from_module, gene_order_hash
from ._load import load
from ._registry import registry, save_safetensors
from ._scimilarity import SCimilarityEncoder
from ._train import train_encoder

__all__ = [
    "FoundationModel",
    "Preprocessing",
    "SCimilarityEncoder",
    "from_module",
    "gene_order_hash",
    "load",
    "registry",
    "save_safetensors",
    "train_encoder",
]
