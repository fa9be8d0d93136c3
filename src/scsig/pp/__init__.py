"""Preprocessing: align cells to a model's gene order and normalize them by its recipe."""

from __future__ import annotations

from ._align import GeneAlignment, align_genes
from ._prepare import prepare
from ._validate import check_counts

__all__ = ["GeneAlignment", "align_genes", "check_counts", "prepare"]
