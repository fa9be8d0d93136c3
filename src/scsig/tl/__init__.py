"""Tools: attributions, signature scores, hit calls and genes ranked by attribution."""

from __future__ import annotations

from ._attribute import DegenerateAttributionError, attribute
from ._compare import compare_scores
from ._hits import hits
from ._rank_genes_groups import rank_genes_groups
from ._score import score

__all__ = ["DegenerateAttributionError", "attribute", "compare_scores", "hits", "rank_genes_groups", "score"]
