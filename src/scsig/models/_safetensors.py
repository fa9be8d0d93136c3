"""SCimilarity-architecture model folders with safetensors weights: writing and reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._utils import check_choice
from ._files import SaveFolder

if TYPE_CHECKING:
    from ._base import FoundationModel

__all__ = ["SAFETENSORS_FILE", "load_safetensors_folder", "save_safetensors", "stage_safetensors"]

METADATA_KEY = "scsig"
"""Key of the safetensors header metadata written by :func:`save_safetensors` (a JSON string)."""

SAFETENSORS_FILE = "encoder.safetensors"
"""Weights file of a safetensors model folder (the SCimilarity layout with safetensors for ``encoder.ckpt``)."""

SAFETENSORS_KIND = "scimilarity-safetensors"
"""The kind of save :func:`save_safetensors` records in the folder's manifest."""

SafetensorsDtype = Literal["float32", "float16"]


def save_safetensors(
    model: FoundationModel,
    folder: str | Path,
    *,
    dtype: SafetensorsDtype = "float32",
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a SCimilarity-architecture model as a folder with safetensors weights.

    The folder holds ``encoder.safetensors`` (the encoder's state dict; floating tensors stored as
    ``dtype``), ``gene_order.tsv``, ``layer_sizes.json`` and, when the model has labels,
    ``label_ints.csv`` -- SCimilarity's layout with safetensors in place of the pickled
    ``encoder.ckpt`` -- and ``scsig-manifest.json``, the list of the files written (with their
    SHA-256). :func:`scsig.models.load` reads it back (as float32).

    The files are written under temporary names inside the folder and moved into place at the end
    (the weights last), so an interrupted save leaves no half-written model that loads. Saving
    never deletes or changes files it does not write.

    Parameters
    ----------
    model
        A model whose encoder is a :class:`~scsig.models.SCimilarityEncoder`.
    folder
        Where to write; created when missing. An existing folder must be empty or hold exactly an
        earlier save of this kind (as its ``scsig-manifest.json`` lists it), unless ``overwrite``.
    dtype
        Storage type of the weights. ``"float16"`` halves the size; the values are rounded to
        half precision (about 3 significant digits).
    metadata
        Extra string key/values stored in the safetensors header, as sorted JSON under the
        single key ``"scsig"`` (with ``format``, ``dtype``, ``name`` and, when it is not
        ``"self_similarity"``, the model's ``default_target``, which loading restores), so that
        saving the same model twice gives identical bytes.
    overwrite
        Save into a folder that holds other files: replace only the files listed above, remove
        the files an earlier scsig save there listed in its manifest and this one does not write
        (e.g. a stale ``label_ints.csv``), and leave every other file alone.

    Returns
    -------
    The folder.

    Examples
    --------
    >>> import scsig as sg
    >>> _, model = sg.datasets.toy()
    >>> folder = sg.models.save_safetensors(model, "toy_model")  # doctest: +SKIP
    >>> sg.models.load("toy_model").n_genes  # doctest: +SKIP
    42
    """
    check_safetensors_model(model, dtype)
    folder = Path(folder)
    with SaveFolder(folder, kind=SAFETENSORS_KIND, what="model", overwrite=overwrite) as out:
        stage_safetensors(model, out, dtype=dtype, metadata=metadata)
        out.commit(last=[SAFETENSORS_FILE])
    return folder


def check_safetensors_model(model: FoundationModel, dtype: str) -> None:
    """Raise unless ``model`` has a SCimilarity-architecture encoder and ``dtype`` is a storage type."""
    from ._scimilarity import SCimilarityEncoder

    if not isinstance(model.encoder, SCimilarityEncoder):
        msg = f"Only SCimilarityEncoder models can be saved this way, not {type(model.encoder).__name__}."
        raise TypeError(msg)
    check_choice("dtype", dtype, SafetensorsDtype)


def stage_safetensors(
    model: FoundationModel,
    out: SaveFolder,
    *,
    prefix: str = "",
    dtype: SafetensorsDtype = "float32",
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write the files of :func:`save_safetensors` into a save in progress, under ``prefix`` (e.g. ``"base/"``)."""
    import torch
    from safetensors.torch import save_file

    from ._scimilarity import stage_model_files

    check_safetensors_model(model, dtype)
    store = getattr(torch, dtype)
    state = {}
    for key, value in model.encoder.state_dict().items():
        value = value.detach().cpu()
        state[key] = (value.to(store) if value.is_floating_point() else value).contiguous()
    header = {"format": "scsig-scimilarity", "dtype": dtype, "name": model.name}
    if model.default_target != "self_similarity":  # kept so a saved copy attributes as the original
        header["default_target"] = str(model.default_target)
    header.update({str(k): str(v) for k, v in (metadata or {}).items()})
    # one key holding sorted JSON: safetensors writes several metadata keys in a random order,
    # which would make the file's bytes (and checksum) differ between identical saves
    header = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    save_file(state, str(out.path(prefix + SAFETENSORS_FILE)), metadata=header)
    stage_model_files(model, out, state, prefix=prefix)


def load_safetensors_folder(folder: str | Path, *, name: str | None = None) -> FoundationModel:
    """Read a folder written by :func:`save_safetensors` (weights are cast to float32)."""
    import torch
    from safetensors import safe_open

    from ._scimilarity import model_from_state, read_gene_order

    folder = Path(folder)
    gene_order = read_gene_order(folder, SAFETENSORS_FILE)
    with safe_open(str(folder / SAFETENSORS_FILE), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        header = json.loads((fh.metadata() or {}).get(METADATA_KEY, "{}"))
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    model = model_from_state(folder, gene_order, state, name=name, weights_file=SAFETENSORS_FILE)
    if "default_target" in header:
        model.default_target = header["default_target"]
    return model
