"""``sg.models.load``: one entry point for model folders and named models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._scimilarity import load_scimilarity

if TYPE_CHECKING:
    from ._base import FoundationModel

__all__ = ["load"]


def load(path: str | Path, *, name: str | None = None, allow_pickle: bool = False) -> FoundationModel:
    """Load a foundation model.

    Parameters
    ----------
    path
        A SCimilarity model folder as published (``encoder.ckpt``, ``gene_order.tsv``,
        ``layer_sizes.json``, optional ``label_ints.csv``).
    name
        Identifier recorded in provenance; defaults to the folder name.
    allow_pickle
        Permit checkpoints that need arbitrary unpickling. Off by default: checkpoints are read
        with ``torch.load(..., weights_only=True)``.

    Returns
    -------
    The model, in eval mode on the CPU.

    Examples
    --------
    >>> import scsig as sg
    >>> model = sg.models.load("path/to/scimilarity_model_v1_1")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        return load_scimilarity(path, name=name, allow_pickle=allow_pickle)
    msg = f"{str(path)!r} is not a model folder. Pass the folder holding encoder.ckpt and gene_order.tsv."
    raise FileNotFoundError(msg)
