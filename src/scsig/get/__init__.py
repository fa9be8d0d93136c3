"""Stored results as tidy DataFrames."""

from __future__ import annotations

from ._hits import hit_fractions

__all__ = ["hit_fractions"]
