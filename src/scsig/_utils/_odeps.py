"""Optional dependencies: import them where needed, with an error that names the extra to install."""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["check_installed", "import_optional"]


def _message(module: str, purpose: str, extra: str) -> str:
    package = module.split(".")[0]
    return f"{purpose} needs the package {package!r}: pip install 'scsig[{extra}]'"


def import_optional(module: str, *, purpose: str, extra: str) -> ModuleType:
    """Import ``module``, or raise an ImportError saying that ``purpose`` needs ``pip install 'scsig[extra]'``.

    Examples
    --------
    >>> from scsig._utils import import_optional
    >>> import_optional("json", purpose="Reading manifests", extra="atlas").__name__
    'json'
    >>> import_optional("no_such_module_xyz", purpose="Something", extra="atlas")
    Traceback (most recent call last):
    ...
    ImportError: Something needs the package 'no_such_module_xyz': pip install 'scsig[atlas]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(_message(module, purpose, extra)) from err


def check_installed(module: str, *, purpose: str, extra: str) -> None:
    """Raise the ImportError of :func:`import_optional` if ``module`` is not installed, without importing it."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        found = False
    if not found:
        raise ImportError(_message(module, purpose, extra))
