"""Example data: a seeded toy AnnData with a tiny model, bundled real data, and checksummed downloads."""

from __future__ import annotations

from ._fetch import RemoteFile, fetch, registry
from ._kang import kang_ifnb
from ._toy import toy

__all__ = ["RemoteFile", "fetch", "kang_ifnb", "registry", "toy"]
