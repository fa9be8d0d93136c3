r"""scTab-SSL checkpoints (self-supervised scTab encoders) in the layout sc-signature reads.

A model folder holds ``var.parquet`` (the input genes in its ``feature_name`` column, 19,331 in the
published models) and a checkpoint: by default a file named ``classifier``, or a Lightning
``.ckpt``, with the tensors at top level or under ``state_dict``. The encoder is an MLP whose
Linear layers are the checkpoint's first ``n_layers`` (default 5) ``*.weight`` tensors, in the
checkpoint's order, each with its ``*.bias`` when present, and SELU between them
(19,331 -> 512 -> 512 -> 256 -> 256 -> 64 in the published model). Its input is
:math:`\log(1 + \text{counts per 10,000})`. Dropout is inactive at inference and is not rebuilt.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from ._base import SCIMILARITY_PREPROCESSING, FoundationModel

if TYPE_CHECKING:
    import torch

__all__ = ["SSLModel", "is_sctab_folder", "load_sctab"]

VAR_FILE = "var.parquet"
DEFAULT_CHECKPOINT = "classifier"


class SSLModel(FoundationModel):
    """A scTab-SSL encoder (an MLP with SELU activations); made by :func:`scsig.models.load`."""

    fast_path_auto = True
    """``engine="auto"`` uses the fast engine (a plain Sequential starting with a Linear), 10-20x faster
    than captum and as close to float64 integrated gradients: the path points where a SELU input (or an
    output entry, under self-similarity) is within float32 rounding of zero are recomputed in float64
    (``benchmarks/precision.py --arch sctab``)."""


def is_sctab_folder(path: Path) -> bool:
    """Whether ``path`` looks like a scTab-SSL folder (``var.parquet`` beside a checkpoint)."""
    return (path / VAR_FILE).is_file()


def _find_checkpoint(folder: Path, checkpoint: str | None) -> Path:
    if checkpoint is not None:
        path = folder / checkpoint
        if not path.is_file():
            msg = f"{str(folder)!r} has no checkpoint file {checkpoint!r}."
            raise FileNotFoundError(msg)
        return path
    if (folder / DEFAULT_CHECKPOINT).is_file():
        return folder / DEFAULT_CHECKPOINT
    ckpts = sorted(folder.glob("*.ckpt"))
    if len(ckpts) == 1:
        return ckpts[0]
    found = [p.name for p in ckpts]
    msg = (
        f"{str(folder)!r} holds var.parquet but no single checkpoint: expected a file named {DEFAULT_CHECKPOINT!r} "
        f"or one *.ckpt (found {found or 'none'}). Pass checkpoint='<file name>' to choose one."
    )
    raise FileNotFoundError(msg)


def _read_state(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        msg = (
            f"{str(path)!r} cannot be read with torch.load(weights_only=True) ({str(err).splitlines()[0]}). "
            "A Lightning checkpoint may pickle its hyper-parameters; if you trust the file, pass allow_pickle=True."
        )
        raise pickle.UnpicklingError(msg) from err
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict):
        msg = f"{str(path)!r} holds a {type(ckpt).__name__}, not a state dict (a mapping of tensor names to tensors)."
        raise ValueError(msg)
    return OrderedDict(
        (k, v) for k, v in ckpt.items() if isinstance(v, torch.Tensor) and (k.endswith((".weight", ".bias")))
    )


def _build_mlp(state: dict[str, torch.Tensor], n_layers: int, n_genes: int, where: str) -> torch.nn.Sequential:
    import torch

    keys = [k for k in state if k.endswith(".weight")]
    if len(keys) < n_layers:
        msg = (
            f"{where} has {len(keys)} '*.weight' tensors, fewer than the encoder's n_layers={n_layers}; the checkpoint "
            "is incomplete or not a scTab-SSL model (pass n_layers= for a shallower encoder)."
        )
        raise ValueError(msg)
    mods: list[torch.nn.Module] = []
    width = n_genes
    for i, key in enumerate(keys[:n_layers]):
        weight = state[key]
        if weight.ndim != 2 or weight.shape[1] != width:
            want = f"(out, {width})"
            msg = (
                f"{where}: tensor {key!r} (layer {i + 1} of {n_layers}) has shape {tuple(weight.shape)}, expected {want}"
                f"{' (the genes of var.parquet)' if i == 0 else ' (the previous layer output)'}. The checkpoint has "
                "extra or missing tensors before the encoder's layers, or does not match var.parquet."
            )
            raise ValueError(msg)
        bias = state.get(key[: -len("weight")] + "bias")
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(weight.float())
            if bias is not None:
                if bias.shape != (weight.shape[0],):
                    msg = f"{where}: bias of {key!r} has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)."
                    raise ValueError(msg)
                lin.bias.copy_(bias.float())
        mods.append(lin)
        if i < n_layers - 1:
            mods.append(torch.nn.SELU())
        width = weight.shape[0]
    return torch.nn.Sequential(*mods).eval()


def load_sctab(
    path: str | Path,
    *,
    name: str | None = None,
    checkpoint: str | None = None,
    n_layers: int = 5,
    allow_pickle: bool = False,
) -> SSLModel:
    """Read a scTab-SSL model folder (``var.parquet`` and a checkpoint); see the module's docstring."""
    import pandas as pd

    folder = Path(path)
    var = pd.read_parquet(folder / VAR_FILE)
    if "feature_name" not in var.columns:
        msg = f"{str(folder / VAR_FILE)!r} has no 'feature_name' column (columns: {list(var.columns)[:10]}); it names the model's genes."
        raise ValueError(msg)
    genes = [str(g) for g in var["feature_name"]]
    ckpt = _find_checkpoint(folder, checkpoint)
    state = _read_state(ckpt, allow_pickle=allow_pickle)
    encoder = _build_mlp(state, int(n_layers), len(genes), repr(str(ckpt)))
    h = hashlib.sha256()
    for key, value in encoder.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return SSLModel(
        encoder,
        genes,
        preprocessing=SCIMILARITY_PREPROCESSING,
        name=name or folder.name,
        source=str(folder),
        checksum=h.hexdigest()[:16],
    )
