"""Named models bundled with the package."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from ._safetensors import SAFETENSORS_FILE, load_safetensors_folder, save_safetensors

__all__ = ["BUNDLED", "BundledModel", "SAFETENSORS_FILE", "load_safetensors_folder", "registry", "save_safetensors"]


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
