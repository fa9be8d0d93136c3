"""Small shared helpers."""

from __future__ import annotations

from ._anndata import get_matrix, resolve_adata, to_memory, wrap_return

__all__ = ["get_matrix", "resolve_adata", "to_memory", "wrap_return"]
