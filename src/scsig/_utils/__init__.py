"""Small shared helpers."""

from __future__ import annotations

from ._anndata import get_matrix, resolve_adata, to_memory, wrap_return
from ._choices import check_choice, literal_values
from ._numbers import check_number
from ._odeps import check_installed, import_optional
from ._sparse import CSRBuilder
from ._threads import threads

__all__ = [
    "CSRBuilder",
    "check_choice",
    "check_installed",
    "check_number",
    "get_matrix",
    "import_optional",
    "literal_values",
    "resolve_adata",
    "threads",
    "to_memory",
    "wrap_return",
]
