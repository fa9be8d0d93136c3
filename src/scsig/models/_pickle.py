"""An allow-listed pickle module: checkpoints whose format needs more than ``weights_only`` read without running code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CONTAINER_GLOBALS", "TENSOR_GLOBALS", "allow_list_pickle"]

TENSOR_GLOBALS = (
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.Size",
    "torch.device",
    "torch.nn.parameter.Parameter",
    "_codecs.encode",
)
"""The globals a pickled tensor names: torch's rebuild functions, sizes, devices (dtypes are always accepted)."""

CONTAINER_GLOBALS = (
    "builtins.slice",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "collections.defaultdict",
    "collections.OrderedDict",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
)
"""Plain containers, numbers, strings and numpy arrays (both numpy 1 and 2 module paths): data, never code."""

_PROTOCOL2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def torch_dtype_names() -> set[str]:
    """The names of torch's dtypes (``torch.float32`` is pickled as the global ``torch.float32``)."""
    import torch

    return {n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}


def allow_list_pickle(
    allowed: set[str],
    what: str,
    *,
    hook: Callable[[str, str], Any] | None = None,
    permissive: bool = False,
) -> Any:
    """A module for ``torch.load(..., pickle_module=)`` whose unpickler resolves only allow-listed globals.

    A global the file names is resolved when ``hook(module, name)`` returns something other than ``None``
    (e.g. an inert record class), when ``"module.name"`` is in ``allowed``, or when it is a numpy or torch
    dtype; anything else is a :class:`pickle.UnpicklingError` naming the global and ``what`` (the kind of
    file), unless ``permissive`` (the user's ``allow_pickle=True``), which imports it and so runs the
    file's code.
    """
    import importlib
    import pickle
    import types

    dtypes = torch_dtype_names()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            module = _PROTOCOL2_NAMES.get(module, module)
            key = f"{module}.{name}"
            found = hook(module, name) if hook is not None else None
            if found is not None:
                return found
            is_dtype = (module == "numpy.dtypes" and name.endswith("DType")) or (module == "torch" and name in dtypes)
            if key in allowed or is_dtype or permissive:
                return getattr(importlib.import_module(module), name)
            msg = f"the file names the global {key!r}, which is not one of the types {what} needs"
            raise pickle.UnpicklingError(msg)

    def load(file: Any, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    return types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="scsig_allow_list_pickle")
