"""Reading BMFM-RNA's published files without the ``bmfm_targets`` package.

A published BMFM-RNA folder (e.g. ``ibm-research/biomed.rna.bert.110m.wced.multitask.v1``) holds one
PyTorch Lightning checkpoint (``*.ckpt``) and the multi-field tokenizer (``tokenizers/genes/`` and
``tokenizers/expressions/``, each with ``tokenizer.json`` and possibly ``vocab.json`` /
``vocab.txt`` and ``special_tokens_map.json``).

The checkpoint's ``hyper_parameters`` pickle the model configuration as instances of
``bmfm_targets`` classes (``SCBertConfig``, ``FieldInfo``, ...), so ``torch.load(weights_only=True)``
cannot read it. scsig reads it with an allow-listed unpickler: tensors, builtin containers and numpy
values resolve as usual, and every class of a ``bmfm_targets`` module becomes a :class:`Record`, an
inert object that only stores the attributes the file sets (no code of the file's classes runs and
``bmfm_targets`` is never imported). Any other global is refused unless ``allow_pickle=True``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Record", "read_checkpoint", "read_vocab"]

# builtin containers and numpy values a Lightning checkpoint's hyper_parameters may hold
# (besides _pickle.CONTAINER_GLOBALS)
_PLAIN_GLOBALS = (
    "builtins.set",
    "builtins.frozenset",
    "builtins.bool",
    "builtins.object",
    "copyreg._reconstructor",
    "functools.partial",
)
# the packages whose classes become inert records: bmfm_targets' configs, and the objects a
# Hydra/Lightning/transformers run may leave in hyper_parameters (configs, tokenizers, paths)
_RECORD_PACKAGES = (
    "bmfm_targets", "omegaconf", "transformers", "tokenizers", "pytorch_lightning", "lightning",
    "lightning_fabric", "torchmetrics", "pathlib",
)  # fmt: skip


class Record:
    """An inert stand-in for an object of a class scsig does not import (a ``bmfm_targets`` config).

    It stores what the pickle sets: constructor arguments in ``_args`` and the object's state as
    attributes; ``_class`` names the original class (``module.name``).
    """

    _class = "Record"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        else:
            self._state = state

    def get(self, name: str, default: Any = None) -> Any:
        """The attribute ``name`` or ``default``."""
        return self.__dict__.get(name, default)

    def __repr__(self) -> str:
        return f"Record({self._class})"


def _record_class(module: str, name: str) -> type:
    return type(name, (Record,), {"_class": f"{module}.{name}", "__module__": __name__})


def _pickle_module(*, permissive: bool) -> Any:
    """A pickle module: ``bmfm_targets`` classes become records; other globals must be allow-listed.

    With ``permissive`` (``allow_pickle=True``) any other global is imported, which runs the file's code.
    """
    from ._pickle import CONTAINER_GLOBALS, TENSOR_GLOBALS, allow_list_pickle

    records: dict[str, type] = {}

    def record(module: str, name: str) -> type | None:
        if module.split(".")[0] not in _RECORD_PACKAGES:
            return None
        key = f"{module}.{name}"
        return records.setdefault(key, _record_class(module, name))

    allowed = set(_PLAIN_GLOBALS) | set(CONTAINER_GLOBALS) | set(TENSOR_GLOBALS) | _torch_weights_only_globals()
    return allow_list_pickle(allowed, "a BMFM-RNA checkpoint", hook=record, permissive=permissive)


def _torch_weights_only_globals() -> set[str]:
    """The globals torch's own ``weights_only`` unpickler accepts (tensor types, storages, rebuild functions)."""
    try:
        from torch import _weights_only_unpickler

        return {str(k) for k in _weights_only_unpickler._get_allowed_globals()}
    except (ImportError, AttributeError):  # a torch without it: the list above covers plain tensors
        return set()


def read_checkpoint(path: Path, *, allow_pickle: bool = False) -> tuple[dict[str, Any], Any, Any]:
    """The state dict (``model.`` prefix removed), the pickled ``model_config`` and ``trainer_config`` (or None).

    The trainer configuration carries ``pooling_method``, the cell embedding BMFM's own inference
    returns for the checkpoint unless told otherwise.
    """
    import pickle

    import torch

    try:
        raw = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(permissive=allow_pickle)
        )
    except pickle.UnpicklingError as err:
        msg = (
            f"{str(path)!r} cannot be read with scsig's allow-list of the types a BMFM-RNA checkpoint holds: "
            f"{err}. If you trust the file, pass allow_pickle=True."
        )
        raise pickle.UnpicklingError(msg) from err
    if not isinstance(raw, dict) or "state_dict" not in raw:
        keys = sorted(raw)[:5] if isinstance(raw, dict) else type(raw).__name__
        msg = f"{str(path)!r} is not a Lightning checkpoint with a state_dict (it holds {keys})."
        raise ValueError(msg)
    hyper = raw.get("hyper_parameters") or {}
    config = hyper.get("model_config") if isinstance(hyper, dict) else None
    if config is None:
        msg = f"{str(path)!r} has no hyper_parameters['model_config']: it is not a BMFM-RNA checkpoint."
        raise ValueError(msg)
    state = {(k[6:] if k.startswith("model.") else k): v for k, v in raw["state_dict"].items()}
    return state, config, hyper.get("trainer_config")


_BRACKETED = re.compile(r"^\[[^\]]*\]$")


def read_vocab(folder: Path) -> tuple[dict[str, int], set[str], dict[str, str]]:
    """A sub-tokenizer's vocabulary: token -> id, the special tokens and the named special tokens (``cls_token``...).

    Read from ``tokenizer.json`` (the file the published code loads: its model's vocabulary plus the
    added tokens), else ``vocab.json`` or ``vocab.txt`` (one token a line, the line number its id).
    """
    vocab: dict[str, int] = {}
    special: set[str] = set()
    tok_file = folder / "tokenizer.json"
    if tok_file.is_file():
        data = json.loads(tok_file.read_text())
        vocab.update({str(k): int(v) for k, v in (data.get("model", {}).get("vocab") or {}).items()})
        for tok in data.get("added_tokens") or []:
            vocab[str(tok["content"])] = int(tok["id"])
            if tok.get("special", False):
                special.add(str(tok["content"]))
    elif (folder / "vocab.json").is_file():
        vocab.update({str(k): int(v) for k, v in json.loads((folder / "vocab.json").read_text()).items()})
    elif (folder / "vocab.txt").is_file():
        lines = (folder / "vocab.txt").read_text().splitlines()
        vocab.update({tok: i for i, tok in enumerate(lines) if tok})
    else:
        msg = f"{str(folder)!r} holds none of tokenizer.json, vocab.json or vocab.txt: the tokenizer is incomplete."
        raise FileNotFoundError(msg)
    named = {
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
    }
    map_file = folder / "special_tokens_map.json"
    if map_file.is_file():
        for key, value in json.loads(map_file.read_text()).items():
            if isinstance(value, list):
                special.update(v["content"] if isinstance(v, dict) else str(v) for v in value)
            else:
                named[key] = value["content"] if isinstance(value, dict) else str(value)
    special.update(named.values())
    special.update(t for t in vocab if _BRACKETED.match(t))
    return vocab, special, named
