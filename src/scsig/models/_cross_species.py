r"""Cross-species models: a species conversion in front of a pretrained encoder.

A model trained on one species (the *target*, e.g. human) is given data of another (the *source*,
e.g. mouse) through a linear conversion :math:`C` (model genes x source genes) whose non-zero
pattern is the ortholog bipartite graph. Where the conversion sits:

1. the source cells are aligned to the *source* genes that have an ortholog among the model's
   genes (the cross-species model's ``gene_order``) and normalized by the model's own recipe over
   those genes (SCimilarity: counts scaled to 10,000 per cell, then ``log1p``);
2. the normalized vector :math:`x` is converted, :math:`C x`, into the model's gene order;
3. the pretrained encoder embeds :math:`C x`.

The conversion acts on normalized values, so it is linear in the encoder's input and folds into
the encoder's first affine layer: the first weight :math:`W_1` becomes :math:`W_1 C` (hidden x
source genes). The folded encoder is an ordinary encoder over the source genes (for SCimilarity
encoders, again a :class:`~scsig.models.SCimilarityEncoder`, so the exact fast attribution path
applies unchanged), and attributions land on the source genes.

With one-to-one orthologs only, :math:`C` is a 0/1 matching, the genes normalized over are exactly
the model genes the data reaches, and the model computes exactly what the human model computes on
the data with its genes renamed to their orthologs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from ._base import FoundationModel
from ._conversion import fold_conversion
from ._files import SaveFolder
from ._orthologs import OrthologTable, relationships

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

__all__ = ["CrossSpeciesModel", "load_cross_species"]

CROSS_FILE = "cross_species.json"
CONVERSION_FILE = "conversion.safetensors"
PAIRS_FILE = "orthologs.tsv"
BASE_FOLDER = "base"
CROSS_KIND = "cross-species"
"""The kind of save :meth:`CrossSpeciesModel.save` records in the folder's manifest."""


class CrossSpeciesModel(FoundationModel):
    """A pretrained model of one species that takes cells of another through an ortholog conversion.

    Made by :func:`scsig.models.cross_species`; see there. Besides the :class:`FoundationModel`
    attributes it keeps the pretrained ``base`` model, the ``conversion`` (a CSR matrix, model genes
    x source genes), the ortholog ``table``, the ``species`` of the data and the ``rule`` for several
    orthologs.
    """

    def __init__(
        self,
        base: FoundationModel,
        conversion: sparse.spmatrix,
        source_genes: Sequence[str],
        table: OrthologTable,
        *,
        rule: str,
        name: str | None = None,
        initial: sparse.spmatrix | None = None,
        fit: dict[str, Any] | None = None,
        encoder: torch.nn.Module | None = None,
    ) -> None:
        conv = sparse.csr_matrix(conversion, dtype=np.float64)
        conv.sort_indices()
        if conv.shape != (base.n_genes, len(source_genes)):
            msg = f"The conversion is {conv.shape}, expected (model genes, source genes) = {(base.n_genes, len(source_genes))}."
            raise ValueError(msg)
        super().__init__(
            encoder if encoder is not None else fold_conversion(base.encoder, conv),
            source_genes,
            preprocessing=base.preprocessing,
            name=name or f"{base.name}@{table.source_species}",
            default_target=base.default_target,
            labels=base.labels,
            source=base.source,
        )
        self.base = base
        self.conversion = conv
        self.initial = conv.copy() if initial is None else sparse.csr_matrix(initial, dtype=np.float64)
        self.table = table
        self.species = table.source_species
        self.model_species = table.target_species
        self.rule = rule
        self.fit = fit or {}
        self._aliases: dict[str, int] | None = None

    # ---- provenance -------------------------------------------------------------------------
    def pairs(self) -> pd.DataFrame:
        """The conversion's entries: ``source`` gene, ``target`` (model) gene, ``relationship``, ``initial`` and ``weight``.

        ``relationship`` (``"one2one"``, ``"one2many"``, ``"many2one"`` or ``"many2many"``, from source to
        model gene) is counted among the conversion's entries, i.e. within the model's genes.
        """
        coo = self.conversion.tocoo()
        init = np.asarray(self.initial[coo.row, coo.col]).ravel()
        frame = pd.DataFrame(
            {
                "source": np.asarray(self.gene_order, dtype=object)[coo.col],
                "target": np.asarray(self.base.gene_order, dtype=object)[coo.row],
                "initial": init,
                "weight": coo.data,
            }
        )
        frame.insert(2, "relationship", relationships(frame["source"], frame["target"]).to_numpy())
        return frame

    def describe(self) -> dict[str, Any]:
        """Provenance record: the folded model plus ``cross_species`` (species, table, rule, base model)."""
        record = super().describe()
        kinds = self.pairs()["relationship"].value_counts()
        record["cross_species"] = {
            "species": self.species,
            "model_species": self.model_species,
            "table": self.table.describe(),
            "rule": self.rule,
            "n_pairs": int(self.conversion.nnz),
            "n_one_to_one": int(kinds.get("one2one", 0)),
            "n_model_genes_reached": int(np.diff(self.conversion.indptr).astype(bool).sum()),
            "learned": bool(self.fit),
            "fit": {str(k): v for k, v in self.fit.items()},
            "base_model": {k: v for k, v in self.base.describe().items() if k != "preprocessing"},
        }
        return record

    def __repr__(self) -> str:
        return (
            f"CrossSpeciesModel(name={self.name!r}, {self.species} -> {self.model_species}, "
            f"n_genes={self.n_genes}, base={self.base.name!r}, table={self.table.name!r}, rule={self.rule!r})"
        )

    # ---- gene-name matching (called by scsig.pp's alignment) --------------------------------
    def match_genes(self, names: pd.Index, indexer: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Complete an exact-name match of the data's genes: case-insensitive symbols, and a species check.

        ``indexer`` holds each data gene's exact position in ``gene_order`` (or -1). Genes not matched
        exactly are matched ignoring case (some files store mouse symbols in upper case) when that
        is unambiguous. Raises when the data look like the model's species rather than the source
        species. Returns the completed indexer and report entries.
        """
        names = pd.Index(names.astype(str))
        self._check_not_model_species(names, indexer)
        out = indexer.copy()
        if self._aliases is None:
            upper = pd.Index(self.gene_order).str.upper()
            counts = upper.value_counts()
            self._aliases = {u: i for i, u in enumerate(upper) if counts[u] == 1}
        todo = np.flatnonzero(out < 0)
        taken = set(out[out >= 0].tolist())
        n_case = 0
        for i in todo:
            j = self._aliases.get(names[i].upper(), -1)
            if j >= 0 and j not in taken:
                out[i] = j
                taken.add(j)
                n_case += 1
        found = np.zeros(self.n_genes, dtype=bool)
        found[out[out >= 0]] = True
        reached = np.asarray(self.conversion[:, found].sum(axis=1)).ravel() != 0
        report = {
            "species": self.species,
            "orthologs": self.table.name,
            "n_matched_ignoring_case": int(n_case),
            "n_base_model_genes": int(self.base.n_genes),
            "n_base_model_genes_reached": int(reached.sum()),
        }
        return out, report

    def _check_not_model_species(self, names: pd.Index, indexer: np.ndarray) -> None:
        source_upper = set(pd.Index(self.gene_order).str.upper()) | set(self.table.pairs["source"].str.upper())
        model_names = set(self.base.gene_order) | set(self.table.pairs["target"])
        exact_model = names.isin(list(model_names))
        upper = names.str.upper()
        model_only = exact_model & ~upper.isin(list(source_upper))
        source_only = upper.isin(list(source_upper)) & ~exact_model
        n_model_only, n_source_only = int(model_only.sum()), int(source_only.sum())
        if n_model_only >= 5 and n_model_only > 2 * n_source_only and int((indexer >= 0).sum()) < n_model_only:
            msg = (
                f"adata's genes look like {self.model_species} genes, not {self.species} genes: {n_model_only} are "
                f"{self.model_species} gene names with no {self.species} counterpart (e.g. "
                f"{names[model_only][:5].tolist()}) against {n_source_only} {self.species}-only names. For "
                f"{self.model_species} data use the {self.model_species} model itself (model.base); for "
                f"{self.species} data, pass gene_symbols= a column of {self.species} gene symbols."
            )
            raise ValueError(msg)

    # ---- saving ------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Save as a folder that :func:`scsig.models.load` reads back as a cross-species model.

        The folder holds the folded encoder over the source genes in safetensors (readable by any
        SCimilarity-format reader as an ordinary model), the pretrained model under ``base/``, the
        conversion (``conversion.safetensors``: the current and the initial weights), the ortholog
        pairs used (``orthologs.tsv``), ``cross_species.json`` and ``scsig-manifest.json``, the list of
        the files written (with their SHA-256). The files are written under temporary names inside the
        folder and moved into place at the end (``cross_species.json`` and the folded weights last), so
        an interrupted save leaves no half-written model that loads. Saving never deletes or changes
        files it does not write.

        Parameters
        ----------
        folder
            Where to write; created when missing. An existing folder must be empty or hold exactly an
            earlier cross-species save (as its ``scsig-manifest.json`` lists it), unless ``overwrite``.
        overwrite
            Save into a folder that holds other files: replace only the files listed above, remove the
            files an earlier scsig save there listed in its manifest and this one does not write, and
            leave every other file alone.

        Returns
        -------
        The folder.
        """
        from ._safetensors import SAFETENSORS_FILE, check_safetensors_model, stage_safetensors

        check_safetensors_model(self, "float32")
        check_safetensors_model(self.base, "float32")
        folder = Path(folder)
        with SaveFolder(folder, kind=CROSS_KIND, what="cross-species model", overwrite=overwrite) as out:
            stage_safetensors(self, out, metadata={"cross_species": self.species, "base": self.base.name})
            stage_safetensors(self.base, out, prefix=f"{BASE_FOLDER}/")
            self._stage_conversion(out)
            self.table.pairs[["source", "target"]].to_csv(out.path(PAIRS_FILE), sep="\t", index=False)
            record = {
                "format": "scsig-cross-species",
                "name": self.name,
                "rule": self.rule,
                "base_name": self.base.name,
                "table": self.table.describe(),
                "fit": self.fit,
            }
            out.path(CROSS_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
            out.commit(last=[CROSS_FILE, SAFETENSORS_FILE])
        return folder

    def _stage_conversion(self, out: SaveFolder) -> None:
        """Write ``conversion.safetensors``: the conversion's entries, current and initial weights."""
        import torch
        from safetensors.torch import save_file

        coo = self.conversion.tocoo()
        init = np.asarray(self.initial[coo.row, coo.col]).ravel()
        save_file(
            {
                "rows": torch.as_tensor(coo.row, dtype=torch.int64),
                "cols": torch.as_tensor(coo.col, dtype=torch.int64),
                "weights": torch.as_tensor(coo.data, dtype=torch.float64),
                "initial": torch.as_tensor(init, dtype=torch.float64),
            },
            str(out.path(CONVERSION_FILE)),
        )


def load_cross_species(folder: str | Path, *, name: str | None = None) -> CrossSpeciesModel:
    """Read a folder written by :meth:`CrossSpeciesModel.save`."""
    from safetensors import safe_open

    from ._safetensors import load_safetensors_folder

    folder = Path(folder)
    record = json.loads((folder / CROSS_FILE).read_text())
    if record.get("format") != "scsig-cross-species":
        msg = f"{folder / CROSS_FILE} is not a scsig cross-species record (format {record.get('format')!r})."
        raise ValueError(msg)
    folded = load_safetensors_folder(folder)
    base = load_safetensors_folder(folder / BASE_FOLDER, name=record.get("base_name"))
    with safe_open(str(folder / CONVERSION_FILE), framework="pt") as fh:
        arrays = {k: fh.get_tensor(k).numpy() for k in ("rows", "cols", "weights", "initial")}
    shape = (base.n_genes, folded.n_genes)
    conv = sparse.csr_matrix((arrays["weights"], (arrays["rows"], arrays["cols"])), shape=shape)
    initial = sparse.csr_matrix((arrays["initial"], (arrays["rows"], arrays["cols"])), shape=shape)
    pairs = pd.read_csv(folder / PAIRS_FILE, sep="\t", dtype=str, keep_default_na=False)
    info = record["table"]
    table = OrthologTable(
        pairs,
        source_species=info["source_species"],
        target_species=info["target_species"],
        name=info["name"],
        checksum=info["checksum"],
    )
    return CrossSpeciesModel(
        base,
        conv,
        folded.gene_order,
        table,
        rule=record["rule"],
        name=name or record["name"],
        initial=initial,
        fit=record.get("fit") or {},
        encoder=folded.encoder,
    )
