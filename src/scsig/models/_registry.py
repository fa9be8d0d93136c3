"""Named models bundled with the package, and model folders stored as safetensors."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from .._utils import check_choice

if TYPE_CHECKING:
    from ._base import FoundationModel

__all__ = ["BUNDLED", "BundledModel", "load_safetensors_folder", "registry", "save_safetensors"]

METADATA_KEY = "scsig"
"""Key of the safetensors header metadata written by :func:`save_safetensors` (a JSON string)."""

SAFETENSORS_FILE = "encoder.safetensors"
"""Weights file of a safetensors model folder (the SCimilarity layout with safetensors for ``encoder.ckpt``)."""


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside the package and loads by name.

    Attributes
    ----------
    name
        The name :func:`scsig.models.load` takes.
    folder
        Folder under ``scsig/models/_data``.
    description
        What it is (and is not).
    default_target
        The attribution target :func:`scsig.tl.attribute` uses with this model when given none.
    """

    name: str
    folder: str
    description: str
    default_target: str = "self_similarity"


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="pbmc-demo",
            folder="pbmc-demo",
            description=(
                "Demonstration SCimilarity-architecture encoder trained on 2,700 PBMCs (10x pbmc3k) with "
                "marker-derived cell-type labels; 4,692 genes. For tutorials and tests, not a foundation model. "
                "Attribution target: embedding_distance (chosen on held-out cells, docs/validity.md)."
            ),
            default_target="embedding_distance",
        ),
    )
}
"""Models :func:`scsig.models.load` finds by name."""


def bundled_path(name: str) -> Path:
    """Folder of a bundled model inside the installed package."""
    entry = BUNDLED[name]
    return Path(str(resources.files("scsig.models") / "_data" / entry.folder))


def registry() -> pd.DataFrame:
    """The models :func:`scsig.models.load` knows by name.

    Returns
    -------
    A DataFrame indexed by name with columns ``description``, ``default_target`` (the attribution
    target :func:`scsig.tl.attribute` uses with it when given none), ``path`` (where the files are) and
    ``installed`` (whether the files are present).

    Examples
    --------
    >>> import scsig as sg
    >>> "pbmc-demo" in sg.models.registry().index
    True
    """
    rows = []
    for entry in BUNDLED.values():
        path = bundled_path(entry.name)
        rows.append(
            {
                **asdict(entry),
                "path": str(path),
                "installed": (path / SAFETENSORS_FILE).is_file() or (path / "encoder.ckpt").is_file(),
            }
        )
    return pd.DataFrame(rows).drop(columns="folder").set_index("name")


SafetensorsDtype = Literal["float32", "float16"]


def save_safetensors(
    model: FoundationModel,
    folder: str | Path,
    *,
    dtype: SafetensorsDtype = "float32",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a SCimilarity-architecture model as a folder with safetensors weights.

    The folder holds ``encoder.safetensors`` (the encoder's state dict; floating tensors stored as
    ``dtype``), ``gene_order.tsv``, ``layer_sizes.json`` and, when the model has labels,
    ``label_ints.csv`` -- SCimilarity's layout with safetensors in place of the pickled
    ``encoder.ckpt``. :func:`scsig.models.load` reads it back (as float32).

    Parameters
    ----------
    model
        A model whose encoder is a :class:`~scsig.models.SCimilarityEncoder`.
    folder
        Where to write; created when missing.
    dtype
        Storage type of the weights. ``"float16"`` halves the size; the values are rounded to
        half precision (about 3 significant digits).
    metadata
        Extra string key/values stored in the safetensors header, as sorted JSON under the
        single key ``"scsig"`` (with ``format``, ``dtype``, ``name`` and, when it is not
        ``"self_similarity"``, the model's ``default_target``, which loading restores), so that
        saving the same model twice gives identical bytes.

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
    import torch
    from safetensors.torch import save_file

    from ._scimilarity import SCimilarityEncoder

    if not isinstance(model.encoder, SCimilarityEncoder):
        msg = f"Only SCimilarityEncoder models can be saved this way, not {type(model.encoder).__name__}."
        raise TypeError(msg)
    check_choice("dtype", dtype, SafetensorsDtype)
    store = getattr(torch, dtype)
    state = {}
    for key, value in model.encoder.state_dict().items():
        value = value.detach().cpu()
        state[key] = (value.to(store) if value.is_floating_point() else value).contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = {"format": "scsig-scimilarity", "dtype": dtype, "name": model.name}
    if model.default_target != "self_similarity":  # kept so a saved copy attributes as the original
        header["default_target"] = str(model.default_target)
    header.update({str(k): str(v) for k, v in (metadata or {}).items()})
    # one key holding sorted JSON: safetensors writes several metadata keys in a random order,
    # which would make the file's bytes (and checksum) differ between identical saves
    header = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    tmp = folder / (SAFETENSORS_FILE + ".tmp")
    save_file(state, str(tmp), metadata=header)
    tmp.replace(folder / SAFETENSORS_FILE)
    (folder / "gene_order.tsv").write_text("\n".join(model.gene_order) + "\n")
    (folder / "layer_sizes.json").write_text(json.dumps({k: list(v.shape) for k, v in state.items()}, indent=1))
    if model.labels:
        pd.DataFrame({"0": pd.Series(model.labels)}).to_csv(folder / "label_ints.csv")
    return folder


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
