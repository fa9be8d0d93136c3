"""Tools: attributions, signature scores and hit calls."""

from __future__ import annotations

from ._attribute import DegenerateAttributionError, attribute
from ._score import score

__all__ = ["DegenerateAttributionError", "attribute", "score"]
