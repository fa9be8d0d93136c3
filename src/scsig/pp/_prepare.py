"""``sg.pp.prepare``: raw counts -> normalized input in a model's gene space."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import UNS_KEY
from .._docs import doc_adata, doc_layer_counts, doc_mod, doc_params
from .._utils import get_matrix, resolve_adata, to_memory
from .._utils._validate import warn_empty_cells
from ..models._align import align_genes, model_input

if TYPE_CHECKING:
    from ..models import FoundationModel

__all__ = ["model_input", "prepare"]


@doc_params(doc_adata=doc_adata, doc_layer_counts=doc_layer_counts, doc_mod=doc_mod)
def prepare(
    adata: Any,
    model: FoundationModel,
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    min_overlap: int | None = None,
    check_counts: bool = True,
    mod: str = "rna",
) -> AnnData:
    """Put cells into a model's gene space and normalize them by the model's recipe.

    The cells are aligned to ``model.gene_order`` (genes the data lacks become zeros, genes the
    model lacks are dropped), then normalized by ``model.preprocessing``. For SCimilarity that is
    total-count scaling to 10,000 over the *aligned* genes followed by ``log1p``.

    Parameters
    ----------
    {doc_adata}
    model
        The foundation model.
    {doc_layer_counts}
    gene_symbols
        Column of ``adata.var`` with the gene names the model uses, when ``var_names`` differ
        (e.g. Ensembl IDs).
    min_overlap
        Fewest model genes that must be found in the data (default: 10 % of the model's genes, at most 500).
    check_counts
        Refuse input that is not raw counts (negative, NaN/inf, non-integer values).
    {doc_mod}

    Returns
    -------
    A new AnnData, cells x ``model.gene_order``: ``X`` the normalized float32 CSR input,
    ``obs`` a copy of the input's, ``var["in_data"]`` whether the gene was found, and
    ``uns["scsig"]["prepare"]`` the overlap report. ``adata`` is not changed.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> prepared = sg.pp.prepare(adata, model)
    >>> prepared.shape == (adata.n_obs, model.n_genes)
    True
    """
    _, data = resolve_adata(adata, mod=mod, read_only=True)
    counts = to_memory(get_matrix(data, layer))  # the result holds every cell anyway
    alignment = align_genes(data, model, gene_symbols=gene_symbols, min_overlap=min_overlap)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    x, totals = model_input(counts, alignment, model, validate=check_counts, where=where)
    warn_empty_cells(totals, data.obs_names, what="in the model's genes")
    var = pd.DataFrame(index=pd.Index(model.gene_order, name=None))
    in_data = np.zeros(model.n_genes, dtype=bool)
    in_data[alignment.var_to_model[alignment.var_in_model]] = True
    var["in_data"] = in_data
    out = AnnData(X=x, obs=data.obs.copy(), var=var)
    out.uns[UNS_KEY] = {"prepare": {**alignment.report(), "model": model.describe()}}
    return out
