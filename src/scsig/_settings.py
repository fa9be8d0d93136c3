"""Package-wide settings, one object like :data:`scanpy.settings`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["Settings", "settings"]


@dataclass
class Settings:
    """Settings that every scsig function reads.

    Attributes
    ----------
    verbosity
        0 errors, 1 warnings, 2 info, 3 hints, 4 debug.
    n_jobs
        Threads torch may use for attributions. ``None`` leaves torch's own setting alone.
    device
        Torch device the encoders run on (``"cpu"``, ``"cuda"``, ``"mps"``).
    batch_size
        Cells per attribution batch. ``None`` derives it from :attr:`memory_budget_gb`.
    memory_budget_gb
        Memory one attribution batch may use, in GB; batch sizes follow from it.
    progress
        Show progress bars on long work (each function's ``progress=`` overrides it).
    autoshow
        Call :func:`matplotlib.pyplot.show` after a plot when ``show=None``.
    """

    verbosity: int = 1
    n_jobs: int | None = None
    device: str = "cpu"
    batch_size: int | None = None
    memory_budget_gb: float = 1.0
    progress: bool = field(default_factory=lambda: os.environ.get("SCSIG_PROGRESS", "1") != "0")
    autoshow: bool = True


settings = Settings()
