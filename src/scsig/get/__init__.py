"""Stored results as tidy DataFrames."""

from __future__ import annotations

from ._hits import hit_fractions
from ._orthologs import orthologs

__all__ = ["hit_fractions", "orthologs"]
