"""``sg.get.orthologs``: genes of one species mapped to their orthologs in another, as a table or a signature."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._utils._warn import user_stacklevel

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..models._orthologs import OrthologTable, TableName

__all__ = ["orthologs"]

ONE_TARGET = ("only", "same_symbol", "most_support")
"""Values of the ``choice`` column for a gene given one ortholog without ``expand``."""


def orthologs(
    genes: Sequence[str] | Mapping[str, Any],
    *,
    source: str = "human",
    target: str = "mouse",
    table: TableName | str | pd.DataFrame | None = "mgi2024",
    expand: bool = False,
    as_signature: bool = False,
    warn: bool = True,
) -> pd.DataFrame | list[str] | dict[str, Any]:
    """Map genes to their orthologs in another species: a table to rename genes with, or a translated signature.

    A gene with one ortholog maps to it. A gene with several maps to **one** of them, or to none, unless
    ``expand``: to the ortholog with the same symbol ignoring case (``IFIT1`` -> ``Ifit1`` of ``Ifit1``,
    ``Ifit1bl1``, ``Ifit1bl2``; ``GZMB`` -> ``Gzmb`` of seven granzymes), else, in a table with a support
    count (``"hcop2024"``), to the one most databases support when that one is unique; otherwise to none
    (``LYZ`` in ``"mgi2024"``: ``Lyz1``, ``Lyz2`` and ``Lyz3``). The ``choice`` column says which rule
    applied. With ``expand=True`` every ortholog is kept.

    Relationships are read from ``source`` to ``target`` over the whole table: ``"one2one"`` (neither
    gene has another ortholog), ``"one2many"`` (the gene has several orthologs, each only this one),
    ``"many2one"`` (the gene has one ortholog, which has several) and ``"many2many"``.

    Parameters
    ----------
    genes
        A list of genes, a dict gene -> weight, or a dict signature name -> either.
    source, target
        Species of the given genes and of their orthologs.
    table
        The ortholog table: ``"mgi2024"`` (default; MGI, December 2024), ``"hcop2024"`` (HGNC HCOP, pairs
        supported by at least 3 of 12 databases) or ``"ensembl105"`` (Ensembl 105, for data annotated with
        symbols of that time), see :func:`scsig.models.orthologs`; or a DataFrame of ortholog pairs with
        columns ``source`` and ``target`` (or named after the two species).
    expand
        Keep every ortholog of a gene with several (one row per pair; in a signature, each ortholog with
        the gene's weight), and warn which genes expanded.
    as_signature
        Return the translated genes in the shape of ``genes``, ready for :func:`scsig.tl.score`, instead
        of the table. Genes mapped to no ortholog are left out, with a warning that names them.
    warn
        With ``as_signature``, warn about genes left out or expanded.

    Returns
    -------
    Without ``as_signature``, a DataFrame with a row per gene (with ``expand``, per ortholog pair), in
    the order of ``genes`` (the genes of all signatures of a dict, each once):

    ``source``, ``target``
        The gene and its ortholog (missing when there is none or no rule picks one).
    ``relationship``
        Of the pair (missing for a gene without ortholog; for a gene without a pick, that of its pairs).
    ``n_orthologs``
        How many orthologs the gene has in the table.
    ``choice``
        ``"only"``, ``"same_symbol"``, ``"most_support"``, ``"ambiguous"`` (several, none picked),
        ``"expanded"`` (with ``expand``) or ``"missing"`` (no ortholog).
    ``table``
        The table's name as recorded in provenance (e.g. ``"mgi2024-human-mouse"``).
    ``support_n``
        For ``"hcop2024"``: how many of HCOP's 12 databases predict the pair.

    With ``as_signature=True``, the translation, of the same shape as ``genes``, in its order and
    without duplicates (a weight goes to each ortholog).

    Examples
    --------
    >>> import scsig as sg
    >>> m = sg.get.orthologs(["CD19", "GZMB", "LYZ", "GNLY"])
    >>> m[["source", "target", "relationship", "n_orthologs", "choice"]]
      source target relationship  n_orthologs        choice
    0   CD19   Cd19      one2one            1          only
    1   GZMB   Gzmb    many2many            7   same_symbol
    2    LYZ    NaN     one2many            3     ambiguous
    3   GNLY    NaN          NaN            0       missing

    Rename genes with the pairs: ``dict(zip(m["source"], m["target"]))`` (drop missing targets first).
    A signature for :func:`scsig.tl.score`:

    >>> sg.get.orthologs({"B": ["CD19", "MS4A1"], "NK": ["NKG7", "KLRD1"]}, as_signature=True)
    {'B': ['Cd19', 'Ms4a1'], 'NK': ['Nkg7', 'Klrd1']}
    """
    from ..models._orthologs import resolve_table

    resolved = resolve_table(table, source_species=source, target_species=target)
    if not isinstance(expand, bool) or not isinstance(as_signature, bool):
        msg = f"expand and as_signature must be True or False, got {expand!r} and {as_signature!r}."
        raise TypeError(msg)
    frame = _mapping(_flat_genes(genes), resolved, expand=expand)
    if not as_signature:
        return frame
    lookup = frame.dropna(subset=["target"]).groupby("source", sort=False)["target"].agg(list).to_dict()
    result = _translate(genes, lookup)
    if warn:
        _warn_mapping(frame, resolved)
    return result


def _flat_genes(genes: Any) -> list[str]:
    """The genes of a list, a dict gene -> weight, or a dict name -> either, each once, in order."""
    if isinstance(genes, str):
        msg = f"Pass a list of genes, not a single string ({genes!r:.40})."
        raise TypeError(msg)
    if isinstance(genes, Mapping) and _several(genes):
        out = [g for items in genes.values() for g in _flat_genes(items)]
    else:
        out = [str(g) for g in (genes.keys() if isinstance(genes, Mapping) else genes)]
    return list(dict.fromkeys(out))


def _several(genes: Mapping[str, Any]) -> bool:
    """True for a dict of signatures (values are gene lists or dicts), false for a dict gene -> weight."""
    return len(genes) > 0 and all(not isinstance(v, int | float | np.number) for v in genes.values())


def _mapping(genes: list[str], table: OrthologTable, *, expand: bool) -> pd.DataFrame:
    """The table of :func:`orthologs` for ``genes`` (see there)."""
    pairs = table.pairs.assign(relationship=table.relationships().to_numpy())
    pairs = pairs[pairs["source"].isin(genes)]
    pairs = pairs.assign(n_orthologs=pairs["source"].map(pairs["source"].value_counts()))
    groups = dict(tuple(pairs.groupby("source", sort=False)))
    rows = []
    for gene in genes:
        found = groups.get(gene)
        if found is None:
            rows.append({"source": gene, "n_orthologs": 0, "choice": "missing"})
        elif len(found) == 1 or expand:
            choice = "only" if len(found) == 1 else "expanded"
            rows.extend({**r, "choice": choice} for r in found.to_dict("records"))
        else:
            rows.append(_pick(gene, found))
    columns = ["source", "target", "relationship", "n_orthologs", "choice"]
    extra = ["support_n"] if "support_n" in table.pairs.columns else []
    frame = pd.DataFrame(rows, columns=columns + extra)
    frame.insert(5, "table", table.name)
    frame["n_orthologs"] = frame["n_orthologs"].astype(np.int64)
    if extra:
        frame["support_n"] = frame["support_n"].astype("Int64")
    return frame


def _pick(gene: str, found: pd.DataFrame) -> dict[str, Any]:
    """The row for a gene with several orthologs: the one with its symbol, else the unique best supported."""
    same = found[found["target"].str.upper() == gene.upper()]
    if len(same) == 1:
        return {**same.iloc[0].to_dict(), "choice": "same_symbol"}
    if "support_n" in found.columns:
        best = found[found["support_n"] == found["support_n"].max()]
        if len(best) == 1:
            return {**best.iloc[0].to_dict(), "choice": "most_support"}
    kind = "many2many" if (found["relationship"] == "many2many").any() else "one2many"
    return {"source": gene, "relationship": kind, "n_orthologs": len(found), "choice": "ambiguous"}


def _translate(genes: Any, lookup: dict[str, list[str]]) -> Any:
    """``genes`` (a list, a dict gene -> weight, or a dict name -> either) with each gene replaced by its orthologs."""

    def one(items: Any) -> Any:
        if isinstance(items, Mapping):
            out: dict[str, Any] = {}
            for gene, weight in items.items():
                for hit in lookup.get(str(gene), ()):
                    out.setdefault(hit, weight)
            return out
        return list(dict.fromkeys(hit for gene in items for hit in lookup.get(str(gene), ())))

    if isinstance(genes, Mapping) and _several(genes):
        return {name: one(items) for name, items in genes.items()}
    return one(genes)


def _warn_mapping(frame: pd.DataFrame, table: OrthologTable) -> None:
    """Warn about the genes a signature lost (no ortholog, several without a pick) or that expanded."""
    where = f"in the table {table.name!r}"
    n_by_gene = frame.drop_duplicates("source").set_index("source")["n_orthologs"]
    missing = frame.loc[frame["choice"] == "missing", "source"].tolist()
    if missing:
        _warn(
            f"{len(missing)} {table.source_species} gene(s) have no {table.target_species} ortholog {where} and were left out",
            missing,
        )
    ambiguous = frame.loc[frame["choice"] == "ambiguous", "source"].tolist()
    if ambiguous:
        names = [f"{g} ({n_by_gene[g]})" for g in ambiguous]
        _warn(
            f"{len(ambiguous)} {table.source_species} gene(s) have several {table.target_species} orthologs {where}, "
            "none with the same symbol, and were left out (pass expand=True to keep them all, or list the ones "
            "you want; sg.get.orthologs(genes) shows them)",
            names,
        )
    expanded = list(dict.fromkeys(frame.loc[frame["choice"] == "expanded", "source"]))
    if expanded:
        names = [f"{g} -> {n_by_gene[g]}" for g in expanded]
        _warn(f"expand=True: {len(expanded)} gene(s) expanded into several {table.target_species} orthologs", names)


def _warn(what: str, names: list[str]) -> None:
    more = " ..." if len(names) > 10 else ""
    warnings.warn(f"{what}: {names[:10]}{more}.", UserWarning, stacklevel=user_stacklevel())
