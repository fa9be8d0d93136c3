"""Warnings that point at the user's line, however deep inside scsig they are raised."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["user_stacklevel"]

_PACKAGE = str(Path(__file__).resolve().parents[1]) + "/"
"""The folder of the scsig package (with a trailing separator): frames of files under it are scsig's own."""


def _ours(filename: str) -> bool:
    try:
        return str(Path(filename).resolve()).startswith(_PACKAGE)
    except (OSError, ValueError):  # pragma: no cover - an odd pseudo file name such as "<string>"
        return False


def user_stacklevel() -> int:
    """The ``stacklevel`` for a :func:`warnings.warn` in the calling function that names the first line outside scsig.

    A fixed ``stacklevel`` counts frames, so it points at the user's line only when the warning is
    raised at one depth below the public function; the same helper called from two public functions
    (or from a public function called by another, such as :meth:`scsig.Atlas.attribute` running
    :func:`scsig.tl.attribute`'s steps) would name a line inside scsig. This walks out of the package
    instead. When every frame is scsig's (``python -m scsig.quickstart``), the outermost is named.

    Examples
    --------
    >>> from scsig._utils._warn import user_stacklevel
    >>> user_stacklevel()  # called outside scsig: a warning here names this very line
    1
    """
    frame = sys._getframe(1)  # the function that will call warnings.warn: stacklevel=1
    level = 1
    while frame.f_back is not None and _ours(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level
