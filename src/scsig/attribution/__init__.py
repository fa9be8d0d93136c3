"""Attribution engines, targets and row normalization.

:func:`scsig.tl.attribute` is the public entry point; this module exposes the pieces so that a
result can be checked against a direct captum computation.
"""

from __future__ import annotations

from ._captum import captum_attributions
from ._normalize import normalize_rows
from ._targets import TARGET_DOCS, TargetModule, resolve_target

__all__ = ["TARGET_DOCS", "TargetModule", "captum_attributions", "normalize_rows", "resolve_target"]
