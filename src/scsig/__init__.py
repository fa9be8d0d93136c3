"""scsig: gene-signature scores from foundation-model attributions, native to AnnData.

Use it as ``import scsig as sg``; the namespaces follow scanpy: :mod:`scsig.pp`,
:mod:`scsig.tl`, :mod:`scsig.pl`, :mod:`scsig.get`, plus :mod:`scsig.models`,
:mod:`scsig.datasets` and the on-disk :class:`scsig.Atlas`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import datasets, get, models, pl, pp, tl
from ._settings import settings
from ._version import __version__

if TYPE_CHECKING:
    from .atlas import Atlas

__all__ = ["Atlas", "datasets", "get", "models", "pl", "pp", "settings", "tl", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Atlas":
        from .atlas import Atlas

        return Atlas
    msg = f"module 'scsig' has no attribute {name!r}"
    raise AttributeError(msg)
