"""Input validation shared by every public function that reads counts (kept in :mod:`scsig._utils._validate`)."""

from __future__ import annotations

from .._utils._validate import (
    MAX_COUNT,
    check_counts,
    check_unique,
    check_unique_var_names,
    data_values,
    warn_empty_cells,
)

__all__ = ["MAX_COUNT", "check_counts", "check_unique", "check_unique_var_names", "data_values", "warn_empty_cells"]
