"""Ortholog tables: the bundled Ensembl 105 human-mouse table and user tables for any pair of species."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import pandas as pd

__all__ = ["ORTHOLOGS_FILE", "ORTHOLOGS_SHA256", "OrthologTable", "orthologs", "resolve_table", "translate_genes"]

ORTHOLOGS_FILE = "Ensembl105_Human2Mouse_Genes.csv.gz"
"""The bundled table, under ``scsig/models/_data/orthologs``."""

ORTHOLOGS_SHA256 = "741b301e9b101442cd6e4ffa6f9405d915b26ac3a1678a2fbeef02ef39a3eb7d"
"""SHA-256 of the bundled (gzipped) table, checked by the test suite."""

BUNDLED_NAME = "ensembl105-human-mouse"
"""How the bundled table is named in provenance records."""

BUNDLED_SPECIES = ("human", "mouse")
"""The two species of the bundled table."""


class OrthologTable:
    """Pairs of orthologous genes between a source species (the data's) and a target species (the model's).

    Parameters
    ----------
    pairs
        DataFrame with columns ``source`` and ``target`` (one row per ortholog pair, no missing values,
        no duplicate rows).
    source_species, target_species
        Names of the two species.
    name
        Identifier recorded in provenance.
    checksum
        SHA-256 of the pairs (computed when not given).
    """

    def __init__(
        self,
        pairs: pd.DataFrame,
        *,
        source_species: str,
        target_species: str,
        name: str,
        checksum: str | None = None,
    ) -> None:
        self.pairs = pairs.reset_index(drop=True)
        self.source_species = source_species
        self.target_species = target_species
        self.name = name
        self.checksum = checksum or _pairs_checksum(self.pairs)

    @property
    def n_pairs(self) -> int:
        """Number of ortholog pairs."""
        return len(self.pairs)

    def kinds(self) -> pd.Series:
        """Each pair's kind: ``"1:1"``, ``"1:many"`` (the source gene has several targets), ``"many:1"`` or ``"many:many"``."""
        n_t = self.pairs["source"].map(self.pairs["source"].value_counts())
        n_s = self.pairs["target"].map(self.pairs["target"].value_counts())
        left = n_s.gt(1).map({True: "many", False: "1"})
        right = n_t.gt(1).map({True: "many", False: "1"})
        return (left + ":" + right).rename("kind")

    def reversed(self) -> OrthologTable:
        """The same pairs read from the target species to the source species."""
        return OrthologTable(
            self.pairs.rename(columns={"source": "target", "target": "source"})[["source", "target"]],
            source_species=self.target_species,
            target_species=self.source_species,
            name=self.name,
        )

    def describe(self) -> dict[str, Any]:
        """Provenance record (h5ad-safe)."""
        return {
            "name": self.name,
            "source_species": self.source_species,
            "target_species": self.target_species,
            "n_pairs": int(self.n_pairs),
            "checksum": self.checksum,
        }

    def __repr__(self) -> str:
        return f"OrthologTable({self.name!r}, {self.source_species} -> {self.target_species}, {self.n_pairs} pairs)"


def _pairs_checksum(pairs: pd.DataFrame) -> str:
    text = "\n".join(f"{s}\t{t}" for s, t in zip(pairs["source"], pairs["target"], strict=True))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_bundled() -> pd.DataFrame:
    """Human-mouse pairs of the bundled table, columns ``human`` and ``mouse`` (rows without a mouse gene dropped)."""
    source = resources.files("scsig.models") / "_data" / "orthologs" / ORTHOLOGS_FILE
    with resources.as_file(source) as path:
        table = pd.read_csv(
            path, header=None, names=["human", "mouse"], dtype=str, keep_default_na=False, na_values=[""]
        )
    return table.dropna().drop_duplicates().reset_index(drop=True)


def orthologs(source: str = "mouse", target: str = "human") -> pd.DataFrame:
    """The bundled ortholog table: Ensembl release 105 human-mouse orthologs.

    The table comes from celltypist's MIT-licensed distribution
    (``celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv``): 24,857 human-mouse gene pairs,
    16,757 of them one-to-one. Genes are gene symbols (mouse symbols in their usual case, e.g.
    ``Cd19``).

    Parameters
    ----------
    source, target
        ``"mouse"`` and ``"human"``, in either order: which species goes in the ``source`` column.

    Returns
    -------
    A DataFrame with columns ``source``, ``target`` and ``kind`` (``"1:1"``, ``"1:many"``,
    ``"many:1"`` or ``"many:many"``, read from source to target).

    Examples
    --------
    >>> import scsig as sg
    >>> table = sg.models.orthologs("mouse", "human")
    >>> table.set_index("source").loc["Cd19", "target"]
    'CD19'
    """
    table = resolve_table(None, source_species=source, target_species=target)
    return pd.concat([table.pairs, table.kinds()], axis=1)


def resolve_table(
    orthologs: pd.DataFrame | OrthologTable | None,
    *,
    source_species: str,
    target_species: str,
) -> OrthologTable:
    """An :class:`OrthologTable` from the bundled table (``None``) or a user's DataFrame.

    A user's DataFrame has the columns ``source`` and ``target``, or columns named after the two
    species (e.g. ``"mouse"`` and ``"human"``).
    """
    if isinstance(orthologs, OrthologTable):
        return orthologs
    src, tgt = str(source_species).lower(), str(target_species).lower()
    if orthologs is None:
        if {src, tgt} != set(BUNDLED_SPECIES):
            msg = (
                f"No ortholog table is bundled for {source_species!r} -> {target_species!r}; scsig ships the "
                "Ensembl 105 human-mouse table only. Pass orthologs= a DataFrame with columns 'source' "
                f"({source_species} genes) and 'target' ({target_species} genes), one row per ortholog pair."
            )
            raise ValueError(msg)
        table = _read_bundled()
        pairs = pd.DataFrame({"source": table[src], "target": table[tgt]})
        return OrthologTable(
            pairs, source_species=src, target_species=tgt, name=BUNDLED_NAME, checksum=ORTHOLOGS_SHA256[:16]
        )
    if not isinstance(orthologs, pd.DataFrame):
        msg = f"orthologs must be a pandas DataFrame of ortholog pairs or None (the bundled table), not {type(orthologs).__name__}."
        raise TypeError(msg)
    cols = {str(c).lower(): c for c in orthologs.columns}
    if "source" in cols and "target" in cols:
        s_col, t_col = cols["source"], cols["target"]
    elif src in cols and tgt in cols and src != tgt:
        s_col, t_col = cols[src], cols[tgt]
    else:
        msg = (
            f"The ortholog table has columns {list(orthologs.columns)}; it needs 'source' ({source_species} genes) "
            f"and 'target' ({target_species} genes), or columns named {source_species!r} and {target_species!r}. "
            "Rename its columns, e.g. table.rename(columns={...})."
        )
        raise ValueError(msg)
    pairs = pd.DataFrame({"source": orthologs[s_col], "target": orthologs[t_col]}).dropna()
    pairs = pairs.astype(str)
    pairs = pairs[(pairs["source"] != "") & (pairs["target"] != "")].drop_duplicates()
    if pairs.empty:
        msg = "The ortholog table holds no pair with both a source and a target gene."
        raise ValueError(msg)
    return OrthologTable(pairs, source_species=src, target_species=tgt, name="user")


def translate_genes(
    genes: Sequence[str] | Mapping[str, Any],
    table: OrthologTable,
    *,
    warn: bool = True,
) -> tuple[Any, list[str]]:
    """Translate genes (a list, a dict gene -> weight, or a dict name -> either) through ``table``.

    Every ortholog of a gene is kept (a gene with two orthologs becomes two genes; a weight is
    copied to each), in the order of the input, without duplicates. Returns the translation and the
    genes without an ortholog (warned about when ``warn``).
    """
    lookup = table.pairs.groupby("source", sort=False)["target"].agg(list).to_dict()
    missing: list[str] = []

    def one(items: Any) -> Any:
        if isinstance(items, Mapping):
            out: dict[str, Any] = {}
            for gene, weight in items.items():
                hits = lookup.get(str(gene))
                if not hits:
                    missing.append(str(gene))
                for hit in hits or ():
                    out.setdefault(hit, weight)
            return out
        if isinstance(items, str):
            msg = f"Pass a list of genes, not a single string ({items!r:.40})."
            raise TypeError(msg)
        out_list: list[str] = []
        seen: set[str] = set()
        for gene in items:
            hits = lookup.get(str(gene))
            if not hits:
                missing.append(str(gene))
            for hit in hits or ():
                if hit not in seen:
                    seen.add(hit)
                    out_list.append(hit)
        return out_list

    several = (
        isinstance(genes, Mapping) and len(genes) > 0 and all(not isinstance(v, int | float) for v in genes.values())
    )
    result = {name: one(items) for name, items in genes.items()} if several else one(genes)
    missing = list(dict.fromkeys(missing))
    if warn and missing:
        warnings.warn(
            f"{len(missing)} {table.source_species} gene(s) have no {table.target_species} ortholog in the "
            f"table {table.name!r} and were left out: {missing[:10]}{' ...' if len(missing) > 10 else ''}.",
            UserWarning,
            stacklevel=3,
        )
    return result, missing
