"""Translate between the AnnData's genes and a model's gene order, and make a model's input from counts.

The piece of :mod:`scsig.pp` that models need too (:func:`scsig.models.fit_conversion` reads
labeled cells through it), so it lives here, below both; :mod:`scsig.pp` re-exports it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._utils._numbers import check_number
from .._utils._validate import check_counts, check_unique
from .._utils._warn import user_stacklevel

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base import FoundationModel

__all__ = ["GeneAlignment", "align_genes", "model_input"]


def _looks_ensembl(names: pd.Index) -> bool:
    sample = names[: min(len(names), 200)].astype(str)
    return len(sample) > 0 and float(np.mean(sample.str.match(r"^ENS[A-Z]*G\d{6,}"))) > 0.5


LOW_OVERLAP = 0.5
"""Below this fraction of the model's genes found in the data, aligning warns."""


def default_min_overlap(n_model_genes: int) -> int:
    """10 % of the model's genes, at least 1 and at most 500."""
    return int(min(500, max(1, np.ceil(0.1 * n_model_genes))))


@dataclass
class GeneAlignment:
    """Where each of the data's genes sits in a model's gene order.

    Attributes
    ----------
    model_genes
        The model's gene order.
    var_names
        The data's gene names as matched (``var_names`` or the ``gene_symbols`` column).
    var_to_model
        For each data gene, its position in the model's order, or -1.
    """

    model_genes: list[str]
    var_names: pd.Index
    var_to_model: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def var_in_model(self) -> np.ndarray:
        """Boolean mask over the data's genes, true where the model knows the gene."""
        return self.var_to_model >= 0

    @property
    def n_overlap(self) -> int:
        """Number of model genes found in the data."""
        return int(self.var_in_model.sum())

    @property
    def projection(self) -> sparse.csr_matrix:
        """0/1 matrix of data genes x model genes; ``counts @ projection`` aligns to the model."""
        if not hasattr(self, "_projection"):
            rows = np.flatnonzero(self.var_in_model)
            cols = self.var_to_model[rows]
            self._projection = sparse.csr_matrix(
                (np.ones(rows.size, dtype=np.float32), (rows, cols)),
                shape=(len(self.var_names), len(self.model_genes)),
            )
        return self._projection

    def to_model(self, x: np.ndarray | sparse.spmatrix) -> sparse.csr_matrix:
        """Cells x data genes -> cells x model genes (CSR float64); genes the data lacks are zeros."""
        x = sparse.csr_matrix(x, dtype=np.float64)
        out = x @ self.projection
        out.sort_indices()
        return sparse.csr_matrix(out)

    def to_var(self, x: np.ndarray) -> np.ndarray:
        """Dense cells x model genes -> dense cells x data genes; genes outside the model are zeros."""
        out = np.zeros((x.shape[0], len(self.var_names)), dtype=x.dtype)
        cols = np.flatnonzero(self.var_in_model)
        out[:, cols] = x[:, self.var_to_model[cols]]
        return out

    def report(self) -> dict[str, Any]:
        """Overlap summary (h5ad-safe)."""
        return {
            "n_model_genes": len(self.model_genes),
            "n_data_genes": len(self.var_names),
            "n_overlap": self.n_overlap,
            **self.extra,
        }


def _match_names(
    model: FoundationModel, model_index: pd.Index, names: pd.Index, unnamed: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Each data gene's position in the model's order (-1 if none) and extra report entries.

    Names match exactly; a model that defines ``match_genes`` (cross-species models: symbols in any
    case, a species check, how many of the pretrained model's genes the orthologs reach) completes the match.
    """
    var_to_model = model_index.get_indexer(names)
    var_to_model[unnamed] = -1
    extra: dict[str, Any] = {}
    match = getattr(model, "match_genes", None)
    if callable(match):
        var_to_model, extra = match(names, var_to_model)
        var_to_model[unnamed] = -1
    return var_to_model, extra


def align_genes(
    adata: AnnData,
    model: FoundationModel,
    *,
    gene_symbols: str | None = None,
    min_overlap: int | None = None,
) -> GeneAlignment:
    """Match ``adata``'s genes to ``model``'s gene order and check the overlap.

    Parameters
    ----------
    adata
        The data.
    model
        The model whose gene order to match.
    gene_symbols
        Column of ``adata.var`` holding the names the model uses (e.g. symbols when ``var_names`` are
        Ensembl IDs); genes with a missing (NaN) name in it match no model gene. ``None`` uses ``var_names``.
    min_overlap
        Fewest model genes that must be found. Default: 10 % of the model's genes, at most 500
        (500 for SCimilarity's 28,231 genes).

    Returns
    -------
    The alignment.
    """
    names, unnamed, what = _data_names(adata, gene_symbols)
    model_index = pd.Index(model.gene_order)
    var_to_model, extra = _match_names(model, model_index, names, unnamed)
    alignment = GeneAlignment(list(model.gene_order), names, var_to_model.astype(np.int64), extra)

    n_model = model.n_genes
    if min_overlap is None:
        min_overlap = default_min_overlap(n_model)
    check_number("min_overlap", min_overlap, integer=True, minimum=1)
    overlap = alignment.n_overlap
    if overlap < min_overlap:
        msg = (
            f"Only {overlap} of the model's {n_model} genes are in {what} (at least {min_overlap} needed; "
            f"first data genes: {names[:3].tolist()}, first model genes: {model.gene_order[:3]})."
            f"{_few_genes_hint(adata, names, model_index, what)}"
        )
        raise ValueError(msg)
    if overlap < LOW_OVERLAP * n_model:
        warnings.warn(
            f"The model sees only {overlap} of its {n_model} genes ({100 * overlap / n_model:.0f} %) in {what}; the "
            "others are zeros to it, which changes its embedding and every attribution and score. Attributions need "
            "all genes: if adata was subset (e.g. to highly variable genes), attribute the full counts instead (e.g. "
            "layer='counts' of the object before subsetting).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return alignment


def _data_names(adata: AnnData, gene_symbols: str | None) -> tuple[pd.Index, np.ndarray, str]:
    """The data's gene names to match (unique), which genes have none, and how to name them in messages."""
    unnamed = np.zeros(adata.n_vars, dtype=bool)
    if gene_symbols is None:
        names = pd.Index(adata.var_names.astype(str))
        what = "adata.var_names"
        fix = "Make them unique with `adata.var_names_make_unique()` or pass gene_symbols= a column of unique names."
    else:
        if gene_symbols not in adata.var.columns:
            msg = f"gene_symbols={gene_symbols!r} is not a column of adata.var (columns: {list(adata.var.columns)})."
            raise KeyError(msg)
        symbols = adata.var[gene_symbols]
        unnamed = symbols.isna().to_numpy()  # genes without a symbol match no model gene
        names = pd.Index(symbols.astype(str))
        what = f"adata.var[{gene_symbols!r}]"
        fix = "Each gene must map to one column: drop or rename the duplicates first."
    check_unique(names[~unnamed], what=what, fix=fix)
    return names, unnamed, what


def _few_genes_hint(adata: AnnData, names: pd.Index, model_index: pd.Index, what: str) -> str:
    """The likely reason, and the fix, when too few of the model's genes are found in the data."""
    data_ens, model_ens = _looks_ensembl(names), _looks_ensembl(model_index)
    if data_ens and not model_ens:
        cols = [c for c in adata.var.columns if adata.var[c].dtype == object or str(adata.var[c].dtype) == "category"]
        return (
            f" {what} look like Ensembl IDs but the model uses gene symbols: pass gene_symbols= the "
            f"column of adata.var holding symbols (candidates: {cols})."
        )
    if model_ens and not data_ens:
        return f" The model uses Ensembl IDs but {what} do not: pass gene_symbols= a column of Ensembl IDs."
    return (
        " Check that both use the same kind of gene names (symbols vs Ensembl IDs) and species, and that "
        "adata was not subset to highly variable genes: attributions need all genes (use the full counts, "
        "e.g. layer='counts' of the object before subsetting)."
    )


def model_input(
    counts: np.ndarray | sparse.spmatrix,
    alignment: GeneAlignment,
    model: FoundationModel,
    *,
    validate: bool = True,
    where: str = "adata.X",
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Align a batch of cells to the model and normalize it; returns (input CSR float32, aligned totals)."""
    recipe = model.preprocessing
    if validate:
        check_counts(counts, where=where, require_integer=recipe.requires_counts)
    aligned = alignment.to_model(counts)
    totals = np.asarray(aligned.sum(axis=1)).ravel()
    return recipe.apply(aligned), totals
