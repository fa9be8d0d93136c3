"""Stored results as tidy DataFrames."""

from __future__ import annotations

from ._hits import hit_fractions, hit_thresholds
from ._orthologs import orthologs
from ._signature import signature

__all__ = ["hit_fractions", "hit_thresholds", "orthologs", "signature"]
