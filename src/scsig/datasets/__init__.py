"""Example data: a seeded toy AnnData with a tiny model, and real bundled data."""

from __future__ import annotations

from ._toy import toy

__all__ = ["toy"]
