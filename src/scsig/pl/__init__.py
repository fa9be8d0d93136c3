"""Plots that sit next to scanpy's sc.pl."""

from __future__ import annotations

__all__: list[str] = []
