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

import copy as _copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._docs import doc_params, doc_progress
from ._base import FoundationModel
from ._files import SaveFolder
from ._orthologs import OrthologTable, resolve_table

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch
    from anndata import AnnData

__all__ = ["CrossSpeciesModel", "cross_species", "fit_conversion", "load_cross_species"]

RULES = ("mean", "split")
CROSS_FILE = "cross_species.json"
CONVERSION_FILE = "conversion.safetensors"
PAIRS_FILE = "orthologs.tsv"
BASE_FOLDER = "base"
CROSS_KIND = "cross-species"
"""The kind of save :meth:`CrossSpeciesModel.save` records in the folder's manifest."""


def conversion_matrix(
    table: OrthologTable, model_genes: Sequence[str], *, rule: Literal["mean", "split"] = "mean"
) -> tuple[sparse.csr_matrix, list[str]]:
    """The conversion (model genes x source genes, CSR float64) and the source gene order.

    The source genes are those with an ortholog among ``model_genes``, ordered by the first model
    gene they reach. ``rule`` says what several orthologs do: ``"mean"`` -- a model gene receives
    the mean of its source orthologs, and a source gene with several model orthologs feeds each in
    full (rows sum to 1); ``"split"`` -- a source gene's value is split evenly between its model
    orthologs and a model gene receives the sum of its shares (columns sum to 1). One-to-one pairs
    have weight 1 under both rules.
    """
    if rule not in RULES:
        msg = f"rule must be one of {list(RULES)}, not {rule!r}."
        raise ValueError(msg)
    model_index = pd.Index(model_genes)
    pairs = table.pairs.assign(row=model_index.get_indexer(table.pairs["target"]))
    pairs = pairs[pairs["row"] >= 0].sort_values("row", kind="stable")
    source_genes = list(dict.fromkeys(pairs["source"]))
    if not source_genes:
        msg = (
            f"None of the model's {len(model_index)} genes (e.g. {list(model_index[:3])}) is a "
            f"{table.target_species} gene of the ortholog table {table.name!r} (e.g. "
            f"{table.pairs['target'].head(3).tolist()}). Check that the model is a {table.target_species} model "
            "and that the table uses the same kind of gene names (symbols vs Ensembl IDs) as the model."
        )
        raise ValueError(msg)
    col = pd.Index(source_genes).get_indexer(pairs["source"])
    row = pairs["row"].to_numpy()
    if rule == "mean":
        weights = 1.0 / np.bincount(row, minlength=len(model_index))[row]
    else:
        weights = 1.0 / np.bincount(col, minlength=len(source_genes))[col]
    conv = sparse.csr_matrix((weights.astype(np.float64), (row, col)), shape=(len(model_index), len(source_genes)))
    conv.sort_indices()
    return conv, source_genes


class _SparseConversion:
    """Builds the modules that put a conversion in front of an encoder."""

    @staticmethod
    def first_linear(encoder: torch.nn.Module) -> tuple[torch.nn.Module, str] | None:
        """The encoder's first module if it is a Linear (after Dropout/Identity), with its qualified name."""
        from torch import nn

        from ._scimilarity import SCimilarityEncoder

        if isinstance(encoder, SCimilarityEncoder):
            block = encoder.network[0]
            modules = list(block.named_children()) if isinstance(block, nn.Sequential) else [("", block)]
            prefix = "network.0"
        elif type(encoder).forward is nn.Sequential.forward:
            modules, prefix = list(encoder.named_children()), ""
        else:
            return None
        for name, module in modules:
            if isinstance(module, nn.Dropout | nn.AlphaDropout | nn.Identity):
                continue
            if isinstance(module, nn.Linear):
                full = f"{prefix}.{name}".strip(".") if name else prefix
                return module, full
            return None
        return None


def fold_conversion(encoder: torch.nn.Module, conversion: sparse.spmatrix) -> torch.nn.Module:
    """A copy of ``encoder`` whose first Linear takes source genes: weight ``W1 @ conversion`` (computed in float64).

    Encoders without a leading Linear get the conversion as a first module instead (captum path).
    """
    import torch
    from torch import nn

    from ._scimilarity import SCimilarityEncoder

    conv = sparse.csr_matrix(conversion, dtype=np.float64)
    found = _SparseConversion.first_linear(encoder)
    if found is None:
        return nn.Sequential(_conversion_module(conv), _copy.deepcopy(encoder)).eval()
    first, path = found
    w1 = first.weight.detach().cpu().double().numpy()
    folded = np.asarray((conv.T @ w1.T).T, dtype=np.float32)  # hidden x source genes
    out = _copy.deepcopy(encoder)
    new = nn.Linear(conv.shape[1], first.out_features, bias=first.bias is not None)
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(np.ascontiguousarray(folded)))
        if first.bias is not None:
            new.bias.copy_(first.bias.detach().cpu())
    parent = out
    *parents, leaf = path.split(".")
    for part in parents:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    if leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    if isinstance(out, SCimilarityEncoder):
        out.n_genes = conv.shape[1]
    return out.eval()


def _conversion_module(conv: sparse.csr_matrix) -> torch.nn.Module:
    import torch
    from torch import nn

    class ConversionLayer(nn.Module):
        """``x -> x @ C.T`` with a sparse conversion ``C`` (model genes x source genes)."""

        def __init__(self) -> None:
            super().__init__()
            coo = conv.tocoo()
            self.register_buffer("rows", torch.as_tensor(coo.row, dtype=torch.int64))
            self.register_buffer("cols", torch.as_tensor(coo.col, dtype=torch.int64))
            self.register_buffer("weights", torch.as_tensor(coo.data, dtype=torch.float32))
            self.n_out = conv.shape[0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x.new_zeros((x.shape[0], self.n_out))
            return out.index_add(1, self.rows, x[:, self.cols] * self.weights)

    return ConversionLayer()


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
        """The conversion's entries: ``source`` gene, ``target`` (model) gene, ``kind``, ``initial`` and ``weight``."""
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
        n_t = frame["source"].map(frame["source"].value_counts())
        n_s = frame["target"].map(frame["target"].value_counts())
        frame.insert(2, "kind", np.where(n_s > 1, "many", "1") + np.array(":") + np.where(n_t > 1, "many", "1"))
        return frame

    def describe(self) -> dict[str, Any]:
        """Provenance record: the folded model plus ``cross_species`` (species, table, rule, base model)."""
        record = super().describe()
        kinds = self.pairs()["kind"].value_counts()
        record["cross_species"] = {
            "species": self.species,
            "model_species": self.model_species,
            "table": self.table.describe(),
            "rule": self.rule,
            "n_pairs": int(self.conversion.nnz),
            "n_one_to_one": int(kinds.get("1:1", 0)),
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


def cross_species(
    model: FoundationModel | str,
    *,
    species: str = "mouse",
    orthologs: pd.DataFrame | None = None,
    model_species: str = "human",
    rule: Literal["mean", "split"] = "mean",
    name: str | None = None,
) -> CrossSpeciesModel:
    r"""Make a model of one species take cells of another, through ortholog genes.

    The result is a :class:`~scsig.models.FoundationModel` whose ``gene_order`` is the ``species``
    genes that have an ortholog among ``model``'s genes. Its first operation converts a cell into the
    model's genes with a linear map :math:`C` (model genes x source genes) whose non-zero pattern is
    the ortholog graph: a one-to-one ortholog is copied with weight 1. What several orthologs do is
    set by ``rule``:

    ``"mean"`` (default)
        A model gene with several source orthologs receives their mean (weights :math:`1/k`); a
        source gene with several model orthologs is copied to each of them in full. Every model
        gene's input stays on the scale of one gene.
    ``"split"``
        A source gene with :math:`k` model orthologs gives each :math:`1/k` of its value; a model
        gene with several source orthologs receives the sum. The total over the genes is kept.

    The cells are normalized by the model's own recipe over the cross-species model's genes, then
    converted (:math:`C` acts on normalized values, so it folds into the encoder's first affine
    layer, :math:`W_1 \to W_1 C`, and the fast attribution path applies unchanged). With one-to-one
    orthologs only, this is exactly the model applied to the data with its genes renamed to their
    orthologs. Attributions land on the data's (source-species) genes.

    Parameters
    ----------
    model
        The pretrained model (or a name or folder that :func:`scsig.models.load` reads).
    species
        The species of the data.
    orthologs
        Ortholog pairs: a DataFrame with columns ``source`` (``species`` genes) and ``target``
        (``model_species`` genes, named as in the model's gene order), or with columns named after
        the two species. ``None`` uses the bundled Ensembl 105 human-mouse table
        (:func:`scsig.models.orthologs`; from celltypist, MIT licence).
    model_species
        The species the model was trained on.
    rule
        What several orthologs do, ``"mean"`` or ``"split"`` (above).
    name
        Identifier recorded in provenance; default ``f"{model.name}@{species}"``.

    Returns
    -------
    The cross-species model. It attributes and scores like any model, :meth:`~CrossSpeciesModel.save`
    writes it and :func:`scsig.models.load` reads it back; ``adata.uns["scsig"]["layers"][key]["model"]
    ["cross_species"]`` records the species, the table (name and checksum), the rule and the base model.

    Examples
    --------
    >>> import scsig as sg
    >>> xmodel = sg.models.cross_species(sg.models.load("pbmc-demo"), species="mouse")
    >>> xmodel.gene_order[:3], xmodel.base.n_genes
    (['Noc2l', 'Isg15', 'Tnfrsf4'], 4692)
    """
    from ._load import load

    if not isinstance(model, FoundationModel):
        model = load(model)
    if isinstance(model, CrossSpeciesModel):
        msg = "model is already a cross-species model; pass its pretrained model (model.base) instead."
        raise TypeError(msg)
    if str(species).lower() == str(model_species).lower():
        msg = f"species={species!r} is the model's own species; use the model directly."
        raise ValueError(msg)
    table = resolve_table(orthologs, source_species=species, target_species=model_species)
    conv, genes = conversion_matrix(table, model.gene_order, rule=rule)
    n_reached = int(np.diff(conv.indptr).astype(bool).sum())
    if n_reached < 0.5 * model.n_genes:
        warnings.warn(
            f"Only {n_reached} of the model's {model.n_genes} genes have a {species} ortholog in the table "
            f"{table.name!r}; the other genes are zeros for every {species} cell.",
            UserWarning,
            stacklevel=2,
        )
    return CrossSpeciesModel(model, conv, genes, table, rule=rule, name=name)


@doc_params(doc_progress=doc_progress)
def fit_conversion(
    model: CrossSpeciesModel,
    adata: AnnData,
    *,
    labels: str,
    layer: str | None = None,
    gene_symbols: str | None = None,
    l2: float = 1.0,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 256,
    rng: int = 0,
    progress: bool | None = None,
) -> tuple[CrossSpeciesModel, pd.DataFrame]:
    r"""Learn the conversion's weights on labeled cells of the data's species (TRON).

    Transfer-orthology learning: the pretrained encoder stays frozen; only the conversion's non-zero
    entries (the ortholog pairs, initialized at the orthology map :math:`C_0`) are learned, together
    with a linear classifier on the embedding. The loss is the classifier's cross-entropy on the
    cells' ``labels`` plus :math:`\lambda \lVert C - C_0 \rVert^2 / n_\mathrm{pairs}` (``l2``) that
    keeps the weights near the orthology; Adam, full passes over the cells in shuffled batches. The
    classifier is discarded; the learned conversion is folded into a new model.

    Whether it helps must be measured on held-out cells: pass only training cells here.

    Parameters
    ----------
    model
        A cross-species model from :func:`scsig.models.cross_species`.
    adata
        Raw counts of labeled cells of the model's source species.
    labels
        Column of ``adata.obs`` with the cells' labels (cells with a missing label are not used).
    layer
        Layer with the counts; ``None`` uses ``adata.X``.
    gene_symbols
        Column of ``adata.var`` with the gene names, when ``var_names`` differ.
    l2
        Weight :math:`\lambda` of the pull toward the orthology map.
    epochs, lr, batch_size
        Passes over the cells, Adam's learning rate, cells per step.
    rng
        Seed of the classifier's initialization and the shuffling.
    {doc_progress}

    Returns
    -------
    The model with the learned conversion, and a DataFrame of the ortholog pairs (``source``,
    ``target``, ``kind``, ``initial`` and learned ``weight``, ``change``) sorted by the size of the change;
    its ``attrs["loss_history"]`` holds the mean loss of each epoch. The weights are not constrained
    in sign. The fit's settings are recorded in the model's provenance (``describe()["cross_species"]["fit"]``).

    Examples
    --------
    >>> import scsig as sg
    >>> xmodel = sg.models.cross_species("pbmc-demo", species="mouse")
    >>> learned, pairs = sg.models.fit_conversion(xmodel, mouse_adata, labels="cell_type")  # doctest: +SKIP
    """
    from .._settings import settings

    _check_fit_conversion_args(model, adata, labels=labels, l2=l2, lr=lr, epochs=epochs, batch_size=batch_size)
    x, y, classes = _labeled_input(model, adata, labels=labels, layer=layer, gene_symbols=gene_symbols)
    show = settings.progress if progress is None else progress
    learned_w, history = _learn_conversion(
        model, x, y, len(classes), l2=l2, epochs=epochs, lr=lr, batch_size=batch_size, rng=rng, show=show
    )
    coo = model.conversion.tocoo()
    conv = sparse.csr_matrix((learned_w, (coo.row, coo.col)), shape=model.conversion.shape)
    fit = {
        "labels": labels,
        "n_cells": int(x.shape[0]),
        "classes": [str(c) for c in classes],
        "l2": float(l2),
        "epochs": int(epochs),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "rng": int(rng),
        "final_loss": float(history[-1]),
    }
    learned = CrossSpeciesModel(
        model.base,
        conv,
        model.gene_order,
        model.table,
        rule=model.rule,
        name=f"{model.name}+fit",
        initial=model.initial,
        fit=fit,
    )
    pairs = learned.pairs()
    pairs["change"] = pairs["weight"] - pairs["initial"]
    pairs = pairs.reindex(pairs["change"].abs().sort_values(ascending=False, kind="stable").index)
    pairs.attrs["loss_history"] = history
    return learned, pairs.reset_index(drop=True)


def _check_fit_conversion_args(
    model: Any, adata: AnnData, *, labels: str, l2: float, lr: float, epochs: int, batch_size: int
) -> None:
    """Check the arguments of :func:`fit_conversion`."""
    if not isinstance(model, CrossSpeciesModel):
        msg = f"fit_conversion needs a cross-species model from sg.models.cross_species, not {type(model).__name__}."
        raise TypeError(msg)
    if labels not in adata.obs.columns:
        msg = f"labels={labels!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
        raise KeyError(msg)
    for key, value in (("l2", l2), ("lr", lr)):
        if not (np.isfinite(value) and value >= 0):
            msg = f"{key} must be a non-negative number, got {value!r}."
            raise ValueError(msg)
    if epochs < 1 or batch_size < 1:
        msg = f"epochs and batch_size must be positive, got {epochs} and {batch_size}."
        raise ValueError(msg)


def _labeled_input(
    model: CrossSpeciesModel, adata: AnnData, *, labels: str, layer: str | None, gene_symbols: str | None
) -> tuple[sparse.csr_matrix, torch.Tensor, pd.Index]:
    """The model input of the labeled cells of :func:`fit_conversion`, their class indices and the classes."""
    import torch

    from .._utils import get_matrix
    from ._align import align_genes, model_input

    y_raw = adata.obs[labels]
    keep = y_raw.notna().to_numpy()
    classes = pd.Index(pd.unique(y_raw[keep].astype(str))).sort_values()
    if len(classes) < 2:
        msg = f"adata.obs[{labels!r}] needs at least two labels to learn from; it has {list(classes)}."
        raise ValueError(msg)
    y = torch.as_tensor(classes.get_indexer(y_raw[keep].astype(str)), dtype=torch.int64)

    alignment = align_genes(adata, model, gene_symbols=gene_symbols)
    x, _ = model_input(get_matrix(adata, layer)[np.flatnonzero(keep)], alignment, model)
    return sparse.csr_matrix(x), y, classes


def _learn_conversion(
    model: CrossSpeciesModel,
    x: sparse.csr_matrix,
    y: torch.Tensor,
    n_classes: int,
    *,
    l2: float,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: int,
    show: bool,
) -> tuple[np.ndarray, list[float]]:
    """The training loop of :func:`fit_conversion`.

    Returns the learned weights of the conversion's non-zero entries (in the order of
    ``model.conversion.tocoo()``) and the mean loss of each epoch.
    """
    import torch
    from torch import nn

    from .._utils._progress import tqdm

    gen = torch.Generator().manual_seed(int(rng))
    torch.manual_seed(int(rng))
    coo = model.conversion.tocoo()
    rows = torch.as_tensor(coo.row, dtype=torch.int64)
    cols = torch.as_tensor(coo.col, dtype=torch.int64)
    start_w = torch.as_tensor(coo.data, dtype=torch.float32)
    init_w = torch.as_tensor(np.asarray(model.initial[coo.row, coo.col]).ravel(), dtype=torch.float32)
    weights = nn.Parameter(start_w.clone())
    encoder = _copy.deepcopy(model.base.encoder).eval()
    for p in encoder.parameters():
        p.requires_grad_(requires_grad=False)
    with torch.no_grad():
        latent = encoder(torch.zeros(2, model.base.n_genes)).shape[1]
    head = nn.Linear(latent, n_classes)
    optimizer = torch.optim.Adam([weights, *head.parameters()], lr=lr)
    n_model = model.base.n_genes
    n_pairs = max(1, int(coo.nnz))

    def embed(batch: torch.Tensor) -> torch.Tensor:
        converted = batch.new_zeros((batch.shape[0], n_model)).index_add(1, rows, batch[:, cols] * weights)
        return encoder(converted)

    history = []
    n = x.shape[0]
    for _ in tqdm(range(epochs), disable=not show, desc="fit conversion", unit="epoch"):
        order = torch.randperm(n, generator=gen).numpy()
        total = 0.0
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            batch = torch.as_tensor(x[idx].toarray(), dtype=torch.float32)
            logits = head(embed(batch))
            loss = nn.functional.cross_entropy(logits, y[idx])
            loss = loss + l2 * ((weights - init_w) ** 2).sum() / n_pairs
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        history.append(total / n)
    return weights.detach().double().numpy(), history
