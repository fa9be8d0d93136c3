"""Example data: a seeded toy AnnData with a tiny model, bundled real data, and checksummed downloads."""

from __future__ import annotations

from ._examples import kang_muscat, pbmc3k
from ._fetch import RemoteFile, fetch, registry
from ._kang import kang_ifnb
from ._kang_full import kang_ifnb_full
from ._liao import liao_bal
from ._pbmc68k import pbmc68k_reduced
from ._toy import toy

__all__ = [
    "RemoteFile",
    "fetch",
    "kang_ifnb",
    "kang_ifnb_full",
    "kang_muscat",
    "liao_bal",
    "pbmc3k",
    "pbmc68k_reduced",
    "registry",
    "toy",
]
