"""``sg.get.orthologs``: gene signatures translated into another species."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd

__all__ = ["orthologs"]


def orthologs(
    genes: Sequence[str] | Mapping[str, Any],
    *,
    source: str = "human",
    target: str = "mouse",
    table: pd.DataFrame | None = None,
    warn: bool = True,
) -> Any:
    """Translate genes or signatures into their orthologs in another species.

    Every ortholog of a gene is kept, in the order of the input and without duplicates: a human
    gene with two mouse orthologs becomes two mouse genes (a weight is copied to both). Genes without
    an ortholog are left out, with a warning that names them.

    Parameters
    ----------
    genes
        A list of genes, a dict gene -> weight, or a dict signature name -> either.
    source, target
        Species of the given genes and of the result.
    table
        Ortholog pairs: a DataFrame with columns ``source`` and ``target`` (or named after the two
        species). ``None`` uses the bundled Ensembl 105 human-mouse table (:func:`scsig.models.orthologs`).
    warn
        Warn about the genes without an ortholog.

    Returns
    -------
    The translation, of the same shape as ``genes``, ready for :func:`scsig.tl.score`.

    Examples
    --------
    >>> import scsig as sg
    >>> sg.get.orthologs(["CD19", "MS4A1", "CD79A"], source="human", target="mouse")
    ['Cd19', 'Ms4a1', 'Cd79a']
    >>> sg.get.orthologs({"NK": ["NKG7", "KLRD1"]}, source="human", target="mouse")
    {'NK': ['Nkg7', 'Klrd1']}
    """
    from ..models._orthologs import resolve_table, translate_genes

    resolved = resolve_table(table, source_species=source, target_species=target)
    result, _ = translate_genes(genes, resolved, warn=warn)
    return result
