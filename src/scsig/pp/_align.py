"""Translate between the AnnData's genes and a model's gene order (kept in :mod:`scsig.models._align`)."""

from __future__ import annotations

from ..models._align import LOW_OVERLAP, GeneAlignment, align_genes, default_min_overlap

__all__ = ["LOW_OVERLAP", "GeneAlignment", "align_genes", "default_min_overlap"]
