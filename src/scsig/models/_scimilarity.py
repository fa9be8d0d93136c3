"""SCimilarity model folders: the encoder architecture, loading and saving."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ._base import SCIMILARITY_PREPROCESSING, FoundationModel, register_folder_writer
from ._files import SaveFolder

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SCimilarityEncoder", "load_scimilarity", "save_scimilarity"]

_KEY = re.compile(r"^network\.(\d+)\.(?:(\d+)\.)?(weight|bias|running_mean|running_var|num_batches_tracked)$")


class SCimilarityEncoder(nn.Module):
    """The SCimilarity encoder architecture.

    ``network`` holds one block per hidden layer, each ``Dropout -> Linear -> BatchNorm1d -> PReLU``
    (parameters under ``network.<i>.<j>.*``), then a final ``Linear`` (``network.<n>.*``). The output
    is L2-normalized. In eval mode Dropout is the identity and BatchNorm uses its running statistics.

    Parameters
    ----------
    n_genes
        Input dimension (length of the gene order).
    hidden_dims
        Widths of the hidden layers.
    latent_dim
        Embedding dimension.
    dropout
        Dropout of the hidden blocks (training only).
    input_dropout
        Dropout of the input block (training only).
    """

    def __init__(
        self,
        n_genes: int,
        hidden_dims: Sequence[int] = (1024, 1024),
        latent_dim: int = 128,
        *,
        dropout: float = 0.5,
        input_dropout: float = 0.4,
    ) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.hidden_dims = [int(h) for h in hidden_dims]
        self.latent_dim = int(latent_dim)
        self.network = nn.ModuleList()
        width = n_genes
        for i, hidden in enumerate(self.hidden_dims):
            self.network.append(
                nn.Sequential(
                    nn.Dropout(p=input_dropout if i == 0 else dropout),
                    nn.Linear(width, hidden),
                    nn.BatchNorm1d(hidden),
                    nn.PReLU(),
                )
            )
            width = hidden
        self.network.append(nn.Linear(width, self.latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x`` (cells x genes) to L2-normalized ``(cells, latent_dim)``."""
        for layer in self.network:
            x = layer(x)
        return F.normalize(x, p=2, dim=1)


def _linear_shapes(shapes: dict[str, Sequence[int]]) -> list[tuple[int, int]]:
    """(out, in) of every Linear layer in network order, from parameter name -> shape."""
    found = []
    for key, shape in shapes.items():
        m = _KEY.match(key)
        if m and m.group(3) == "weight" and len(shape) == 2:
            found.append(((int(m.group(1)), int(m.group(2) or 0)), (int(shape[0]), int(shape[1]))))
    return [shape for _, shape in sorted(found)]


def read_gene_order(folder: Path, weights_file: str) -> list[str]:
    """The genes of ``folder/gene_order.tsv``, one per line."""
    path = folder / "gene_order.tsv"
    if not path.is_file():
        msg = (
            f"{path} not found: a model folder holds {weights_file}, gene_order.tsv and layer_sizes.json "
            "(and optionally label_ints.csv)."
        )
        raise FileNotFoundError(msg)
    with path.open(encoding="utf-8-sig") as fh:  # a byte-order mark would otherwise become part of the first gene
        return [line.strip() for line in fh if line.strip()]


def model_from_state(
    folder: Path,
    gene_order: list[str],
    state: dict[str, torch.Tensor],
    *,
    name: str | None,
    weights_file: str,
) -> FoundationModel:
    """Build a SCimilarity-architecture :class:`FoundationModel` from a folder's state dict and gene order.

    The layer sizes come from ``layer_sizes.json`` when present, else from the state dict itself;
    ``label_ints.csv`` is read when present.
    """
    sizes_path = folder / "layer_sizes.json"
    if sizes_path.is_file():
        try:
            shapes = json.loads(sizes_path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            msg = (
                f"{sizes_path} is not valid JSON ({err}); it should map each weight's name to its shape "
                "(as SCimilarity writes it). Restore the file, or delete it: the shapes are then read from the checkpoint."
            )
            raise ValueError(msg) from err
        if not isinstance(shapes, dict):
            msg = f"{sizes_path} holds a {type(shapes).__name__}, not a mapping of weight names to shapes; restore or delete it."
            raise ValueError(msg)
    else:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    linears = _linear_shapes(shapes)
    if len(linears) < 2:
        msg = f"{folder / weights_file} does not hold a SCimilarity-architecture encoder ({len(linears)} Linear layers found)."
        raise ValueError(msg)
    if linears[0][1] != len(gene_order):
        msg = (
            f"The first layer takes {linears[0][1]} genes but gene_order.tsv lists {len(gene_order)}; "
            "the folder's files do not belong together."
        )
        raise ValueError(msg)
    encoder = SCimilarityEncoder(len(gene_order), [out for out, _ in linears[:-1]], linears[-1][0])
    encoder.load_state_dict(state, strict=True)

    labels = None
    label_path = folder / "label_ints.csv"
    if label_path.is_file():
        import pandas as pd

        frame = pd.read_csv(label_path, index_col=0)
        labels = {int(k): str(v) for k, v in frame.iloc[:, 0].items()}
    return FoundationModel(
        encoder,
        gene_order,
        preprocessing=SCIMILARITY_PREPROCESSING,
        name=name or folder.name,
        labels=labels,
        source=str(folder),
    )


def load_scimilarity(folder: str | Path, *, name: str | None = None, allow_pickle: bool = False) -> FoundationModel:
    """Load a SCimilarity model folder (``encoder.ckpt``, ``gene_order.tsv``, ``layer_sizes.json``).

    Parameters
    ----------
    folder
        The model folder as published.
    name
        Identifier for provenance; defaults to the folder name.
    allow_pickle
        Allow a checkpoint that needs arbitrary unpickling (``weights_only=False``). Only for
        checkpoints from a source you trust: unpickling can run any code.
    """
    folder = Path(folder)
    ckpt_path = folder / "encoder.ckpt"
    if not ckpt_path.is_file():
        msg = (
            f"{ckpt_path} not found: a SCimilarity model folder holds encoder.ckpt, gene_order.tsv and "
            "layer_sizes.json (and optionally label_ints.csv)."
        )
        raise FileNotFoundError(msg)
    gene_order = read_gene_order(folder, "encoder.ckpt")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # torch raises UnpicklingError with a long text
        if allow_pickle:
            raise
        msg = (
            f"{ckpt_path} could not be loaded with weights_only=True ({type(err).__name__}). It holds objects "
            "other than tensors. If you trust its source, pass allow_pickle=True to unpickle it."
        )
        raise ValueError(msg) from err
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        msg = f"{ckpt_path} holds no state dict (expected {{'state_dict': {{...}}}})."
        raise ValueError(msg)
    return model_from_state(folder, gene_order, state, name=name, weights_file="encoder.ckpt")


SCIMILARITY_KIND = "scimilarity-ckpt"
"""The kind of save :func:`save_scimilarity` records in the folder's manifest."""


def save_scimilarity(model: FoundationModel, folder: str | Path, *, overwrite: bool = False) -> None:
    """Write ``model`` as a SCimilarity model folder (weights-only checkpoint); see :meth:`FoundationModel.save`."""
    if not isinstance(model.encoder, SCimilarityEncoder):
        msg = (
            f"Only SCimilarityEncoder models can be saved as a SCimilarity folder, not {type(model.encoder).__name__}."
        )
        raise TypeError(msg)
    state = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()}
    with SaveFolder(folder, kind=SCIMILARITY_KIND, what="model", overwrite=overwrite) as out:
        torch.save({"state_dict": state}, out.path("encoder.ckpt"))
        stage_model_files(model, out, state)
        out.commit(last=["encoder.ckpt"])


def stage_model_files(
    model: FoundationModel, out: SaveFolder, state: dict[str, torch.Tensor], *, prefix: str = ""
) -> None:
    """Write a model folder's files besides the weights: gene order, layer sizes and (when any) labels."""
    out.path(prefix + "gene_order.tsv").write_text("\n".join(model.gene_order) + "\n")
    sizes = {k: list(v.shape) for k, v in state.items()}
    out.path(prefix + "layer_sizes.json").write_text(json.dumps(sizes, indent=1))
    if model.labels:
        import pandas as pd

        pd.DataFrame({"0": pd.Series(model.labels)}).to_csv(out.path(prefix + "label_ints.csv"))


register_folder_writer(SCimilarityEncoder, save_scimilarity)
