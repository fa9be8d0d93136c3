"""Stored results as tidy DataFrames."""

from __future__ import annotations

__all__: list[str] = []
