"""The :class:`FoundationModel` interface and its preprocessing recipe."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch

__all__ = ["FoundationModel", "Preprocessing", "from_module", "gene_order_hash"]


def gene_order_hash(genes: Sequence[str]) -> str:
    """SHA-256 of a gene order (genes joined by newlines), the key that ties layers, models and atlases.

    Examples
    --------
    >>> import scsig as sg
    >>> sg.models.gene_order_hash(["CD3E", "MS4A1"])[:12]
    'a29422dc22f2'
    """
    return hashlib.sha256("\n".join(map(str, genes)).encode()).hexdigest()


@dataclass(frozen=True)
class Preprocessing:
    r"""How a model wants its input: counts aligned to its gene order, then normalized.

    The cells are first aligned to the model's gene order (genes the data lacks are zeros). Then,
    when ``target_sum`` is set, each cell is scaled to ``target_sum`` total counts *over the aligned
    genes*; then ``log1p`` is applied when asked. SCimilarity's recipe is the default:
    ``Preprocessing(target_sum=1e4, log1p=True)``.

    Parameters
    ----------
    target_sum
        Total each cell is scaled to, or ``None`` for no total-count scaling.
    log1p
        Apply :math:`\log(1 + x)` after scaling.
    requires_counts
        The input must be raw counts (non-negative integers); checked before normalizing.
    """

    target_sum: float | None = 1e4
    log1p: bool = True
    requires_counts: bool = True

    def apply(self, counts: sparse.csr_matrix) -> sparse.csr_matrix:
        """Normalize aligned counts (cells x model genes) into float32 model input."""
        x = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
        if self.target_sum is not None:
            totals = np.asarray(x.sum(axis=1)).ravel()
            scale = np.divide(self.target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
            x.data *= np.repeat(scale, np.diff(x.indptr))
        if self.log1p:
            np.log1p(x.data, out=x.data)
        return x.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for provenance records (h5ad-safe)."""
        return {
            "target_sum": float(self.target_sum) if self.target_sum is not None else "none",
            "log1p": bool(self.log1p),
            "requires_counts": bool(self.requires_counts),
        }


SCIMILARITY_PREPROCESSING = Preprocessing(target_sum=1e4, log1p=True, requires_counts=True)
IDENTITY_PREPROCESSING = Preprocessing(target_sum=None, log1p=False, requires_counts=False)


_FOLDER_WRITERS: dict[type, Callable[..., None]] = {}
"""Encoder class -> the function that saves a model with such an encoder as a folder (set by its backend)."""


def register_folder_writer(encoder_type: type, writer: Callable[..., None]) -> None:
    """Make :meth:`FoundationModel.save` write models whose encoder is an ``encoder_type`` with ``writer``.

    Backends call this when imported: a model can only hold an encoder of a class already imported,
    so the data type needs no import of its backends.
    """
    _FOLDER_WRITERS[encoder_type] = writer


class FoundationModel:
    """A single-cell encoder together with its gene order and preprocessing recipe.

    Every attribution engine sees the model only through this object: ``encoder`` maps a float32
    matrix of cells x ``gene_order`` (already preprocessed) to an embedding.

    Parameters
    ----------
    encoder
        A :class:`torch.nn.Module` mapping ``(n_cells, n_genes)`` to ``(n_cells, n_latent)``.
        It is put in eval mode.
    gene_order
        The model's input genes, in order.
    preprocessing
        The recipe that turns aligned raw counts into encoder input.
    name
        A short identifier recorded in provenance.
    default_target
        The attribution target used when :func:`scsig.tl.attribute` gets none.
    labels
        Optional class labels the model was trained on (index -> label).
    source
        Where the model was loaded from.
    checksum
        A checksum of the weights (recorded in provenance).
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        gene_order: Sequence[str],
        *,
        preprocessing: Preprocessing = SCIMILARITY_PREPROCESSING,
        name: str = "model",
        default_target: str = "self_similarity",
        labels: dict[int, str] | None = None,
        source: str | None = None,
        checksum: str | None = None,
    ) -> None:
        if isinstance(gene_order, str):
            msg = f"gene_order must be a list of gene names, not a string ({gene_order!r:.40})."
            raise TypeError(msg)
        genes = [str(g) for g in gene_order]
        if len(set(genes)) != len(genes):
            dup = sorted({g for g in genes if genes.count(g) > 1})[:5]
            msg = f"The model's gene order has duplicate genes (e.g. {dup}); each input gene must appear once."
            raise ValueError(msg)
        self.encoder = encoder.eval()
        self.gene_order = genes
        self.preprocessing = preprocessing
        self.name = name
        self.default_target = default_target
        self.labels = labels
        self.source = source
        self._checksum = checksum

    @property
    def n_genes(self) -> int:
        """Number of input genes."""
        return len(self.gene_order)

    @property
    def gene_order_hash(self) -> str:
        """:func:`gene_order_hash` of ``gene_order``."""
        return gene_order_hash(self.gene_order)

    @property
    def checksum(self) -> str:
        """SHA-256 over the encoder's parameters and buffers (first 16 hex digits)."""
        if self._checksum is None:
            h = hashlib.sha256()
            for key, value in sorted(self.encoder.state_dict().items()):
                h.update(key.encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
            self._checksum = h.hexdigest()[:16]
        return self._checksum

    def embed(self, x: np.ndarray | sparse.spmatrix, *, batch_size: int = 1024) -> np.ndarray:
        """Embed already preprocessed cells (cells x ``gene_order``).

        Use :func:`scsig.pp.prepare` to get such a matrix from raw counts.
        """
        import torch

        device = next(iter(self.encoder.parameters()), torch.empty(0)).device
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start : start + batch_size]
                chunk = chunk.toarray() if sparse.issparse(chunk) else np.asarray(chunk)
                out.append(self.encoder(torch.as_tensor(chunk, dtype=torch.float32, device=device)).cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Provenance record of this model (h5ad-safe)."""
        return {
            "name": self.name,
            "source": self.source or "",
            "checksum": self.checksum,
            "n_genes": self.n_genes,
            "gene_order_hash": self.gene_order_hash,
            "preprocessing": self.preprocessing.to_dict(),
            "encoder": type(self.encoder).__name__,
        }

    def save(self, folder: str, *, overwrite: bool = False) -> None:
        """Save as a SCimilarity-format model folder that :func:`scsig.models.load` reads back.

        Only SCimilarity-architecture encoders (:class:`~scsig.models.SCimilarityEncoder`) can be saved.
        The folder holds ``encoder.ckpt`` (a weights-only checkpoint), ``gene_order.tsv``,
        ``layer_sizes.json``, ``label_ints.csv`` when the model has labels, and ``scsig-manifest.json``,
        the list of the files written (with their SHA-256). The files are written under temporary
        names inside the folder and moved into place at the end (the weights last), so an interrupted
        save leaves no half-written model that loads. Saving never deletes or changes files it does not write.

        Parameters
        ----------
        folder
            Where to write; created when missing. An existing folder must be empty or hold exactly an
            earlier save of this kind (as its ``scsig-manifest.json`` lists it), unless ``overwrite``.
        overwrite
            Save into a folder that holds other files: replace only the files listed above, remove the
            files an earlier scsig save there listed in its manifest and this one does not write, and
            leave every other file alone.
        """
        writer = next((w for kind, w in _FOLDER_WRITERS.items() if isinstance(self.encoder, kind)), None)
        if writer is None:
            msg = (
                "Only SCimilarityEncoder models can be saved as a SCimilarity folder, "
                f"not {type(self.encoder).__name__}."
            )
            raise TypeError(msg)
        writer(self, folder, overwrite=overwrite)

    def __repr__(self) -> str:
        return (
            f"FoundationModel(name={self.name!r}, n_genes={self.n_genes}, encoder={type(self.encoder).__name__}, "
            f"preprocessing={self.preprocessing}, default_target={self.default_target!r})"
        )


def from_module(
    module: torch.nn.Module,
    gene_order: Sequence[str],
    *,
    preprocess: Literal["log1p_cp10k", "none"] | Preprocessing = "log1p_cp10k",
    name: str | None = None,
    default_target: str = "self_similarity",
) -> FoundationModel:
    """Wrap any torch module that embeds cells into a :class:`~scsig.models.FoundationModel`.

    The module is run once, in eval mode and without gradients, on two all-zero cells to check
    that it takes ``len(gene_order)`` inputs and returns one embedding row per cell.

    Parameters
    ----------
    module
        Maps a float32 tensor ``(n_cells, len(gene_order))`` to an embedding ``(n_cells, n_latent)``.
    gene_order
        The genes of the module's input, in order.
    preprocess
        ``"log1p_cp10k"`` (counts scaled to 10,000 per cell, then log1p, as SCimilarity),
        ``"none"`` (the module takes the values as they are), or a :class:`Preprocessing`.
    name
        Identifier recorded in provenance; defaults to the module's class name.
    default_target
        Attribution target used when :func:`scsig.tl.attribute` is given none.

    Returns
    -------
    The wrapped model.

    Examples
    --------
    >>> import torch, scsig as sg
    >>> genes = [f"g{i}" for i in range(20)]
    >>> net = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    >>> model = sg.models.from_module(net, genes)
    >>> model.n_genes
    20
    """
    if isinstance(preprocess, Preprocessing):
        recipe = preprocess
    elif preprocess == "log1p_cp10k":
        recipe = SCIMILARITY_PREPROCESSING
    elif preprocess == "none":
        recipe = IDENTITY_PREPROCESSING
    else:
        msg = f"preprocess={preprocess!r} is not known; use 'log1p_cp10k', 'none' or a scsig.models.Preprocessing."
        raise ValueError(msg)
    _check_module(module)
    model = FoundationModel(
        module, gene_order, preprocessing=recipe, name=name or type(module).__name__, default_target=default_target
    )
    _check_input_width(model)
    return model


def _check_module(module: Any) -> None:
    """``module`` is a float32 :class:`torch.nn.Module` (parameters of other dtypes would fail inside the engines)."""
    import torch

    if not isinstance(module, torch.nn.Module):
        hint = " Wrap a function in a torch.nn.Module subclass whose forward calls it." if callable(module) else ""
        msg = f"module must be a torch.nn.Module, got {type(module).__name__}.{hint}"
        raise TypeError(msg)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters() if p.is_floating_point()})
    if dtypes and dtypes != ["float32"]:
        msg = (
            f"The module's parameters are {', '.join(dtypes)}; scsig runs models in float32 (attributions are "
            "float32 layers). Convert a copy first: sg.models.from_module(copy.deepcopy(module).float(), gene_order)."
        )
        raise TypeError(msg)


def _check_input_width(model: FoundationModel) -> None:
    """Embed two all-zero cells: the module must take ``len(gene_order)`` inputs and return ``(n, n_latent)``."""
    try:
        out = model.embed(np.zeros((2, model.n_genes), dtype=np.float32))
    except Exception as err:
        msg = (
            f"The module cannot embed cells of {model.n_genes} genes (len(gene_order)): {type(err).__name__}: {err}. "
            "gene_order must list the module's input genes, in the order of its input columns."
        )
        raise ValueError(msg) from err
    if out.ndim != 2 or out.shape[0] != 2:
        msg = f"The module must return one embedding row per cell, (n_cells, n_latent); for 2 cells it returned {tuple(out.shape)}."
        raise ValueError(msg)
