"""Reading a folder saved by an scvi-tools model (``model.pt``) without scvi-tools.

Its pickle needs a few numpy/pandas container types besides tensors; they are allow-listed (no
arbitrary unpickling), and the encoder is rebuilt from the state dict and the saved initialization
parameters. See :mod:`scsig.models._scvi_model` for what is attributed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._scvi_model import ScviModel, _covariates_from_registry, _name_for, _preprocessing

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SCVI_FILE", "load_scvi_folder"]

SCVI_FILE = "model.pt"


# the container types a saved scvi-tools registry pickles besides tensors (numpy arrays, pandas
# frames and indexes, plain builtins); measured on scvi-tools 1.4.2 saves of SCVI and SCANVI
# (besides _pickle.CONTAINER_GLOBALS)
_REGISTRY_GLOBALS = (
    "builtins.bytes",
    "pandas.core.indexes.base._new_Index",
    "pandas.core.indexes.base.Index",
    "pandas.core.indexes.range.RangeIndex",
    "pandas.core.frame.DataFrame",
    "pandas.core.series.Series",
    "pandas.core.internals.managers.BlockManager",
    "pandas.core.internals.managers.SingleBlockManager",
    "pandas._libs.internals._unpickle_block",
    "pandas.core.arrays.categorical.Categorical",
    "pandas.core.dtypes.dtypes.CategoricalDtype",
)


def _restricted_pickle_module() -> Any:
    """A pickle module whose unpickler resolves only the allow-listed globals (no arbitrary code runs).

    torch's own ``weights_only`` unpickler cannot restore the registry (it refuses to fill a
    ``defaultdict``), so scsig reads ``model.pt`` with this allow-list instead: every global the
    file names must be a tensor rebuild function, a dtype, or one of the numpy/pandas/builtin
    containers above; anything else is an :class:`pickle.UnpicklingError`.
    """
    from ._pickle import CONTAINER_GLOBALS, TENSOR_GLOBALS, allow_list_pickle

    return allow_list_pickle(
        set(_REGISTRY_GLOBALS) | set(CONTAINER_GLOBALS) | set(TENSOR_GLOBALS), "an scvi-tools model.pt"
    )


def _read_model_pt(path: Path, *, allow_pickle: bool) -> dict:
    import pickle

    import torch

    if allow_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())
    except pickle.UnpicklingError as err:
        msg = (
            f"{str(path)!r} cannot be read with scsig's allow-list of the types an scvi-tools model.pt holds: {err}. "
            "If you trust the file, pass allow_pickle=True."
        )
        raise pickle.UnpicklingError(msg) from err


def load_scvi_folder(
    path: str | Path, *, name: str | None = None, allow_pickle: bool = False, input: str = "encoder"
) -> ScviModel:
    """Read a folder saved by an scvi-tools model's ``save`` (``model.pt``) without scvi-tools."""
    folder = Path(path)
    state, attrs, genes = _read_scvi_save(folder, allow_pickle=allow_pickle)
    registry = attrs.get("registry_", {})
    model_class = str(registry.get("model_name", "SCVI"))
    params = _init_params(attrs.get("init_params_", {}))
    linears, posts = _saved_blocks(state, params, folder)
    head = (state["z_encoder.mean_encoder.weight"], state.get("z_encoder.mean_encoder.bias"))
    encode = bool(params.get("encode_covariates", False))
    embedding = None
    if encode and params.get("batch_representation", "one-hot") == "embedding":
        keys = [k for k in state if "embeddings_dict." in k and k.endswith(".weight")]
        if len(keys) != 1:
            msg = f"{str(folder)!r}: a batch embedding is expected in the state dict (found {keys})."
            raise ValueError(msg)
        embedding = state[keys[0]].float().numpy()
    log_variational = bool(params.get("log_variational", True))
    cov = _covariates_from_registry(
        registry, encode=encode, deep=bool(params.get("deeply_inject_covariates", True)), batch_embedding=embedding
    )
    return ScviModel(
        linears,
        posts,
        head,
        genes,
        cov,
        preprocessing=_preprocessing(log_variational=log_variational, input=input),
        name=_name_for(model_class, name) if name is None else name,
        source=str(folder),
        model_class=model_class,
        log1p_inside=input == "model" and bool(log_variational),
    )


def _read_scvi_save(folder: Path, *, allow_pickle: bool) -> tuple[dict, dict, list[str]]:
    """Read and check a saved ``model.pt``; return its state dict, its ``attr_dict`` and its genes."""
    saved = _read_model_pt(folder / SCVI_FILE, allow_pickle=allow_pickle)
    if not isinstance(saved, dict) or "model_state_dict" not in saved or "attr_dict" not in saved:
        msg = f"{str(folder / SCVI_FILE)!r} is not an scvi-tools model file (no model_state_dict / attr_dict)."
        raise ValueError(msg)
    state = saved["model_state_dict"]
    attrs = saved["attr_dict"]
    genes = [str(g) for g in saved.get("var_names", [])]
    if not attrs.get("is_trained_", True):
        msg = f"The model in {str(folder)!r} was saved untrained; train it (model.train()) and save it again."
        raise ValueError(msg)
    return state, attrs, genes


def _saved_blocks(state: dict, params: dict, folder: Path) -> tuple[list[tuple[Any, Any]], list[list[nn.Module]]]:
    """Rebuild the encoder's blocks from a saved state dict: each Linear's (weight, bias) and the layers after it."""
    import torch

    prefix = "z_encoder.encoder.fc_layers.Layer "
    n_blocks = len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})
    if n_blocks == 0 or "z_encoder.mean_encoder.weight" not in state:
        msg = f"{str(folder / SCVI_FILE)!r} has no z_encoder weights; only models with a z_encoder (SCVI, SCANVI, ...) are supported."
        raise ValueError(msg)
    use_bn = params.get("use_batch_norm", "both") in ("encoder", "both", True)
    use_ln = params.get("use_layer_norm", "none") in ("encoder", "both", True)
    dropout = float(params.get("dropout_rate", 0.1))
    extra = params.get("extra_encoder_kwargs") or {}
    if set(extra) - {"activation_fn"} or ("activation_fn" in extra and extra["activation_fn"] is not torch.nn.ReLU):
        msg = f"extra_encoder_kwargs={extra} is not supported when reading a saved folder; load the model with scvi-tools and use sg.models.from_scvi."
        raise ValueError(msg)
    linears, posts = [], []
    for i in range(n_blocks):
        p = f"{prefix}{i}."
        linears.append((state[f"{p}0.weight"], state.get(f"{p}0.bias")))
        mods: list[Any] = []
        if use_bn:
            if f"{p}1.running_mean" not in state:
                msg = f"{str(folder)!r}: the encoder's block {i} has no BatchNorm statistics although the model uses batch norm."
                raise ValueError(msg)
            bn = torch.nn.BatchNorm1d(state[f"{p}1.weight"].shape[0], eps=0.001, momentum=0.01)
            bn.load_state_dict({k[len(p) + 2 :]: v for k, v in state.items() if k.startswith(f"{p}1.")})
            mods.append(bn)
        if use_ln:
            mods.append(torch.nn.LayerNorm(state[f"{p}0.weight"].shape[0], elementwise_affine=False))
        mods.append(torch.nn.ReLU())
        if dropout > 0:
            mods.append(torch.nn.Dropout(dropout))
        posts.append([m.eval() for m in mods])
    return linears, posts


def _init_params(init: dict) -> dict:
    """Flatten scvi-tools' saved ``init_params_`` (``non_kwargs`` and nested ``kwargs``) into one dict."""
    out: dict = {}

    def walk(d: dict) -> None:
        for k, v in d.items():
            if k in ("kwargs", "non_kwargs", "model_kwargs") and isinstance(v, dict):
                walk(v)
            else:
                out[k] = v

    walk(init or {})
    return out
