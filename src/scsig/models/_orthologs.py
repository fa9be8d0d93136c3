"""Ortholog tables: the bundled human-mouse tables (MGI 2024, HCOP 2024, Ensembl 105) and user tables."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "BUNDLED",
    "DEFAULT_TABLE",
    "BundledTable",
    "OrthologTable",
    "TableName",
    "orthologs",
    "relationships",
    "resolve_table",
]

TableName = Literal["mgi2024", "hcop2024", "ensembl105"]
"""Names of the bundled human-mouse tables."""

DEFAULT_TABLE: TableName = "mgi2024"
"""The table used when none is given: the most complete and curated one."""

HCOP_MIN_SUPPORT = 3
"""HCOP pairs predicted by fewer of its 12 orthology databases are left out."""

BUNDLED_SPECIES = ("human", "mouse")
"""The two species of the bundled tables."""


@dataclass(frozen=True)
class BundledTable:
    """A human-mouse ortholog table shipped under ``scsig/models/_data/orthologs`` (see the README there)."""

    key: str
    file: str
    sha256: str
    title: str

    @property
    def record_name(self) -> str:
        """The name recorded in provenance, e.g. ``"mgi2024-human-mouse"``."""
        return f"{self.key}-human-mouse"


BUNDLED: dict[str, BundledTable] = {
    "mgi2024": BundledTable(
        "mgi2024",
        "mgi_hmd_human_mouse_2024-12.csv.gz",
        "fecba57d3af2559dececa1662d263182a3ee378a1c0b5b08505574aab71e2475",
        "MGI human-mouse orthology, December 2024 (HMD_HumanPhenotype.rpt; 29,597 pairs, 16,984 one-to-one)",
    ),
    "hcop2024": BundledTable(
        "hcop2024",
        "hcop_human_mouse_2024-01.csv.gz",
        "0d8bbe35553015ce17e864d9de0adf5085e39bee672f8f0eda9bb74192c7b826",
        "HGNC HCOP human-mouse orthology, January 2024, pairs supported by at least 3 of its 12 databases "
        "(21,810 pairs, 16,331 one-to-one)",
    ),
    "ensembl105": BundledTable(
        "ensembl105",
        "Ensembl105_Human2Mouse_Genes.csv.gz",
        "741b301e9b101442cd6e4ffa6f9405d915b26ac3a1678a2fbeef02ef39a3eb7d",
        "Ensembl release 105, as distributed with celltypist (24,857 pairs, 16,757 one-to-one)",
    ),
}
"""The bundled tables by name; ``sha256`` is that of the gzipped file, checked by the test suite."""


class OrthologTable:
    """Pairs of orthologous genes between a source species (the data's) and a target species (the model's).

    Parameters
    ----------
    pairs
        DataFrame with columns ``source`` and ``target`` (one row per ortholog pair, no missing values,
        no duplicate pairs), and optionally ``support_n`` (how many databases predict the pair).
    source_species, target_species
        Names of the two species.
    name
        Identifier recorded in provenance.
    checksum
        Checksum recorded in provenance: the first 16 hex digits of the bundled file's SHA-256, or of
        the SHA-256 of the pairs (computed when not given).
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

    def relationships(self) -> pd.Series:
        """Each pair's relationship, read from source to target (see :func:`relationships`)."""
        return relationships(self.pairs["source"], self.pairs["target"])

    def reversed(self) -> OrthologTable:
        """The same pairs read from the target species to the source species."""
        return OrthologTable(
            self.pairs.rename(columns={"source": "target", "target": "source"}),
            source_species=self.target_species,
            target_species=self.source_species,
            name=self.name,
            checksum=self.checksum,
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


def relationships(source: pd.Series, target: pd.Series) -> pd.Series:
    """The relationship of each pair ``(source[i], target[i])`` among all the pairs given.

    ``"one2one"``: neither gene has another ortholog; ``"one2many"``: the source gene has several
    target orthologs, the target gene only this one; ``"many2one"``: the target gene has several
    source orthologs, the source gene only this one; ``"many2many"``: both have several. This is the
    ``type`` column of the bundled MGI and HCOP files (tested).
    """
    source, target = pd.Series(source).reset_index(drop=True), pd.Series(target).reset_index(drop=True)
    several_t = source.map(source.value_counts()).to_numpy() > 1
    several_s = target.map(target.value_counts()).to_numpy() > 1
    kind = np.select(
        [~several_t & ~several_s, several_t & ~several_s, ~several_t & several_s],
        ["one2one", "one2many", "many2one"],
        "many2many",
    )
    return pd.Series(kind, name="relationship", dtype=object)


def _pairs_checksum(pairs: pd.DataFrame) -> str:
    text = "\n".join(f"{s}\t{t}" for s, t in zip(pairs["source"], pairs["target"], strict=True))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def _read_bundled(key: str) -> pd.DataFrame:
    """Human-mouse pairs of a bundled table: columns ``human``, ``mouse`` (and ``support_n`` for HCOP).

    Cached: callers copy before changing it.
    """
    spec = BUNDLED[key]
    source = resources.files("scsig.models") / "_data" / "orthologs" / spec.file
    with resources.as_file(source) as path:
        if key == "ensembl105":  # no header; an empty mouse column means no ortholog
            table = pd.read_csv(
                path, header=None, names=["human", "mouse"], dtype=str, keep_default_na=False, na_values=[""]
            )
        else:
            table = pd.read_csv(path, dtype={"human_symbol": str, "mouse_symbol": str}, keep_default_na=False)
            table = table.rename(columns={"human_symbol": "human", "mouse_symbol": "mouse"})
    if key == "hcop2024":
        table = table[table["support_n"] >= HCOP_MIN_SUPPORT][["human", "mouse", "support_n"]]
        table = table.astype({"support_n": np.int64})
    else:
        table = table[["human", "mouse"]]
    table = table.replace("", np.nan).dropna(subset=["human", "mouse"])
    return table.drop_duplicates(subset=["human", "mouse"]).reset_index(drop=True)


def orthologs(source: str = "mouse", target: str = "human", *, table: TableName = DEFAULT_TABLE) -> pd.DataFrame:
    """A bundled human-mouse ortholog table.

    ``"mgi2024"`` (default)
        Mouse Genome Informatics, December 2024: curated orthology from the Alliance of Genome
        Resources; 29,597 pairs, 16,984 of them one-to-one.
    ``"hcop2024"``
        HGNC's HCOP, January 2024: the pairs that at least 3 of its 12 orthology databases predict
        (21,810 pairs, 16,331 one-to-one); ``support_n`` says how many do.
    ``"ensembl105"``
        Ensembl release 105 as distributed with celltypist: 24,857 pairs, 16,757 one-to-one. Some mouse
        symbols in it have been renamed since (``9530003J23Rik``, now ``Lyz3``); use it for data
        annotated with symbols of that time.

    Genes are gene symbols (mouse symbols in their usual case, e.g. ``Cd19``). Provenance, licences
    and checksums are in ``scsig/models/_data/orthologs/README.md``.

    Parameters
    ----------
    source, target
        ``"mouse"`` and ``"human"``, in either order: which species goes in the ``source`` column.
    table
        Which table: ``"mgi2024"``, ``"hcop2024"`` or ``"ensembl105"``.

    Returns
    -------
    A DataFrame with a row per ortholog pair and columns ``source``, ``target``, ``relationship``
    (``"one2one"``, ``"one2many"``, ``"many2one"`` or ``"many2many"``, read from source to target;
    see :func:`scsig.get.orthologs`) and, for ``"hcop2024"``, ``support_n``. ``attrs["table"]`` and
    ``attrs["checksum"]`` name the table.

    Examples
    --------
    >>> import scsig as sg
    >>> table = sg.models.orthologs("mouse", "human")
    >>> table.set_index("source").loc["Cd19", ["target", "relationship"]].tolist()
    ['CD19', 'one2one']
    >>> table.attrs["table"]
    'mgi2024-human-mouse'
    """
    resolved = resolve_table(table, source_species=source, target_species=target)
    frame = resolved.pairs.copy()
    frame.insert(2, "relationship", resolved.relationships().to_numpy())
    frame.attrs.update(table=resolved.name, checksum=resolved.checksum)
    return frame


def bundled_key(name: str) -> str | None:
    """The key of a bundled table given by key (``"mgi2024"``) or provenance name (``"mgi2024-human-mouse"``)."""
    low = name.lower()
    for key, spec in BUNDLED.items():
        if low in (key, spec.record_name):
            return key
    return None


def _bundled_table(name: str, src: str, tgt: str) -> OrthologTable:
    key = bundled_key(name)
    if key is None:
        choices = ", ".join(f"{k!r}" + (" (default)" if k == DEFAULT_TABLE else "") for k in BUNDLED)
        msg = (
            f"table={name!r} is not a bundled ortholog table; choose one of {choices}, or pass a DataFrame of "
            "ortholog pairs with columns 'source' and 'target'."
        )
        raise ValueError(msg)
    if {src, tgt} != set(BUNDLED_SPECIES):
        msg = (
            f"No ortholog table is bundled for {src!r} -> {tgt!r}; the bundled tables ({', '.join(BUNDLED)}) are "
            f"human-mouse. Pass a DataFrame with columns 'source' ({src} genes) and 'target' ({tgt} genes), "
            "one row per ortholog pair."
        )
        raise ValueError(msg)
    spec = BUNDLED[key]
    raw = _read_bundled(key)
    pairs = raw.rename(columns={src: "source", tgt: "target"})[["source", "target", *raw.columns[2:]]]
    return OrthologTable(
        pairs.copy(), source_species=src, target_species=tgt, name=spec.record_name, checksum=spec.sha256[:16]
    )


def resolve_table(
    table: str | pd.DataFrame | OrthologTable | None,
    *,
    source_species: str,
    target_species: str,
) -> OrthologTable:
    """An :class:`OrthologTable` from a bundled table's name (``None``: the default), or a user's DataFrame.

    A user's DataFrame has the columns ``source`` and ``target``, or columns named after the two
    species (e.g. ``"mouse"`` and ``"human"``).
    """
    if isinstance(table, OrthologTable):
        return table
    src, tgt = str(source_species).lower(), str(target_species).lower()
    if table is None or isinstance(table, str):
        return _bundled_table(DEFAULT_TABLE if table is None else table, src, tgt)
    if not isinstance(table, pd.DataFrame):
        msg = (
            f"The ortholog table must be the name of a bundled table ({', '.join(map(repr, BUNDLED))}) or a pandas "
            f"DataFrame of ortholog pairs, not {type(table).__name__}."
        )
        raise TypeError(msg)
    cols = {str(c).lower(): c for c in table.columns}
    if "source" in cols and "target" in cols:
        s_col, t_col = cols["source"], cols["target"]
    elif src in cols and tgt in cols and src != tgt:
        s_col, t_col = cols[src], cols[tgt]
    else:
        msg = (
            f"The ortholog table has columns {list(table.columns)}; it needs 'source' ({source_species} genes) "
            f"and 'target' ({target_species} genes), or columns named {source_species!r} and {target_species!r}. "
            "Rename its columns, e.g. table.rename(columns={...})."
        )
        raise ValueError(msg)
    pairs = pd.DataFrame({"source": table[s_col], "target": table[t_col]}).dropna()
    pairs = pairs.astype(str)
    pairs = pairs[(pairs["source"] != "") & (pairs["target"] != "")].drop_duplicates()
    if pairs.empty:
        msg = "The ortholog table holds no pair with both a source and a target gene."
        raise ValueError(msg)
    return OrthologTable(pairs, source_species=src, target_species=tgt, name="user")
