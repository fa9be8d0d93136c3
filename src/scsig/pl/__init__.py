"""Plots that sit next to scanpy's sc.pl."""

from __future__ import annotations

from ._attributions import gene_attributions
from ._compare import compare_scores
from ._hits import hit_fractions
from ._rank import rank_genes_groups_vs_expression
from ._scores import scores

__all__ = ["compare_scores", "gene_attributions", "hit_fractions", "rank_genes_groups_vs_expression", "scores"]
