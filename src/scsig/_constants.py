"""Default keys and names, defined once."""

from __future__ import annotations

UNS_KEY = "scsig"
"""``adata.uns`` key that holds every scsig provenance record."""

LAYER_PREFIX = "attr_"
"""Attribution layers are named ``attr_<method>`` unless ``key_added`` says otherwise."""

IN_MODEL_SUFFIX = "_in_model"
"""``adata.var[f"{layer}_in_model"]`` marks the genes the layer's model knows."""

SCORE_KEY = "score"
"""Default ``key_added`` of :func:`scsig.tl.score`."""

METHODS = ("ig", "dl", "ixg")
"""Attribution methods: integrated gradients, DeepLIFT, input x gradient."""

TARGETS = ("self_similarity", "embedding_distance")
"""Named attribution targets (see :mod:`scsig.attribution`)."""

RANK_KEY = "rank_genes_groups_scsig"
"""Default ``key_added`` of :func:`scsig.tl.rank_genes_groups` (an ``adata.uns`` key)."""

SCANPY_RANK_KEY = "rank_genes_groups"
"""Where :func:`scanpy.tl.rank_genes_groups` writes; scsig never replaces it unasked."""
