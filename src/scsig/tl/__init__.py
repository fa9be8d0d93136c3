"""Tools: attributions, signature scores and hit calls."""

from __future__ import annotations

from ._attribute import DegenerateAttributionError, attribute
from ._compare import compare_scores
from ._hits import hits
from ._score import score

__all__ = ["DegenerateAttributionError", "attribute", "compare_scores", "hits", "score"]
