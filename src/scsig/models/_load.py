"""``sg.models.load``: one entry point for model folders and named models."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

from ._registry import BUNDLED, bundled_path
from ._safetensors import SAFETENSORS_FILE, load_safetensors_folder

if TYPE_CHECKING:
    from ._base import FoundationModel

__all__ = ["load"]


def _check_finite(model: FoundationModel, path: Path) -> FoundationModel:
    """Refuse a checkpoint with NaN or infinite weights (its embeddings, and attributions, would be NaN)."""
    bad = [n for n, p in model.encoder.named_parameters() if p.is_floating_point() and not bool(p.isfinite().all())]
    bad += [n for n, b in model.encoder.named_buffers() if b.is_floating_point() and not bool(b.isfinite().all())]
    if bad:
        msg = (
            f"The checkpoint in {str(path)!r} holds NaN or infinite values in {len(bad)} tensors (e.g. {bad[:3]}): "
            "the file is damaged or the training diverged. Restore the model folder from its source."
        )
        raise ValueError(msg)
    return model


def _load_folder(path: Path, *, name: str | None, allow_pickle: bool) -> FoundationModel:
    return _check_finite(_read_folder(path, name=name, allow_pickle=allow_pickle), path)


def _read_folder(path: Path, *, name: str | None, allow_pickle: bool) -> FoundationModel:
    if (path / "cross_species.json").is_file():
        from ._cross_species import load_cross_species

        return load_cross_species(path, name=name)
    from ._sctab import is_sctab_folder, load_sctab
    from ._scvi_folder import SCVI_FILE, load_scvi_folder

    if (path / SCVI_FILE).is_file():
        return load_scvi_folder(path, name=name, allow_pickle=allow_pickle)
    if is_sctab_folder(path):
        return load_sctab(path, name=name, allow_pickle=allow_pickle)
    if (path / "encoder.ckpt").is_file():
        from ._scimilarity import load_scimilarity

        return load_scimilarity(path, name=name, allow_pickle=allow_pickle)
    if (path / SAFETENSORS_FILE).is_file():
        return load_safetensors_folder(path, name=name)
    if (path / "tokenizers").is_dir() and any(path.glob("*.ckpt")):  # BMFM-RNA
        from ._bmfm import load_bmfm

        return load_bmfm(path, name=name, allow_pickle=allow_pickle)
    if (path / "models.ckpt").is_file():  # scFoundation
        from ._scfoundation import load_scfoundation

        return load_scfoundation(path, name=name, allow_pickle=allow_pickle)
    if (path / "args.json").is_file() or (path / "vocab.json").is_file():  # scGPT
        from ._scgpt import load_scgpt

        return load_scgpt(path, name=name, allow_pickle=allow_pickle)
    msg = (
        f"{str(path)!r} is not a model folder scsig reads: it holds none of encoder.ckpt or {SAFETENSORS_FILE} "
        "(SCimilarity, with gene_order.tsv and layer_sizes.json), model.pt (a saved scvi-tools model) or "
        "var.parquet (scTab-SSL, with its checkpoint). Pass the folder the model was saved to."
    )
    raise FileNotFoundError(msg)


def load(path: str | Path, *, name: str | None = None, allow_pickle: bool = False) -> FoundationModel:
    """Load a foundation model from a folder or by name.

    Parameters
    ----------
    path
        One of

        - a SCimilarity model folder as published (``encoder.ckpt``, ``gene_order.tsv``,
          ``layer_sizes.json``, optional ``label_ints.csv``);
        - a folder written by :func:`scsig.models.save_safetensors` (``encoder.safetensors`` in
          place of ``encoder.ckpt``);
        - a folder written by :meth:`CrossSpeciesModel.save <scsig.models.CrossSpeciesModel.save>`
          (a cross-species model, see :func:`scsig.models.cross_species`);
        - a folder saved by an scvi-tools model's ``save`` (``model.pt``; scVI, scANVI, ...), read
          without scvi-tools and without arbitrary unpickling (see :func:`scsig.models.from_scvi`
          for what is attributed);
        - a scTab-SSL folder as sc-signature reads it (``var.parquet`` with the genes in
          ``feature_name``, and a checkpoint named ``classifier`` or one ``*.ckpt``): an MLP of the
          checkpoint's first five Linear layers with SELU between, on log1p counts per 10,000;
        - an scGPT model folder as published (``args.json``, ``vocab.json``, ``best_model.pt``) or an
          scFoundation folder (``models.ckpt`` and ``OS_scRNA_gene_index.19264.tsv``) or a BMFM-RNA
          folder (one ``*.ckpt`` and ``tokenizers/``): token
          transformers, attributed by the token engine;
        - the name of a model bundled with scsig, see :func:`scsig.models.registry` (e.g.
          ``"pbmc-demo"``). An existing folder of the same name takes precedence.
    name
        Identifier recorded in provenance; defaults to the folder or model name.
    allow_pickle
        Permit checkpoints that need arbitrary unpickling. Off by default: checkpoints are read
        with ``torch.load(..., weights_only=True)``.

    Returns
    -------
    The model, in eval mode on the CPU.

    Examples
    --------
    >>> import scsig as sg
    >>> model = sg.models.load("pbmc-demo")
    >>> model.name, model.n_genes
    ('pbmc-demo', 4692)
    >>> model = sg.models.load("path/to/scimilarity_model_v1_1")  # doctest: +SKIP
    """
    if not isinstance(path, str | PathLike):
        msg = (
            f"sg.models.load takes a model folder or a bundled model's name (e.g. 'pbmc-demo'), not "
            f"{type(path).__name__} ({path!r:.60}). For a torch module use sg.models.from_module(module, gene_order)."
        )
        raise TypeError(msg)
    folder = Path(path)
    if folder.is_dir():
        return _load_folder(folder, name=name, allow_pickle=allow_pickle)
    key = str(path)
    if key in BUNDLED:
        bundled = bundled_path(key)
        if not bundled.is_dir():
            msg = f"The bundled model {key!r} is not installed (expected at {bundled}); reinstall scsig."
            raise FileNotFoundError(msg)
        model = _load_folder(bundled, name=name or key, allow_pickle=False)
        model.default_target = BUNDLED[key].default_target
        return model
    if folder.is_file():  # a model's file given for its folder
        msg = (
            f"{key!r} is a file; sg.models.load takes the model's folder: pass {str(folder.parent)!r}, the folder "
            f"holding {folder.name!r} and the model's other files (gene list, config, vocabulary)."
        )
        raise FileNotFoundError(msg)
    known = ", ".join(repr(k) for k in sorted(BUNDLED))
    msg = (
        f"{key!r} is not a model folder and not a known model name. Known names: {known}. "
        "Otherwise pass the model's folder (e.g. SCimilarity's, with encoder.ckpt and gene_order.tsv; "
        "scGPT's, with args.json, vocab.json and best_model.pt)."
    )
    raise FileNotFoundError(msg)
