"""Package-wide settings, one object like :data:`scanpy.settings`."""

from __future__ import annotations

import os
import sys
from enum import IntEnum
from typing import Literal, get_args

from ._loglevel import configure

__all__ = ["Settings", "Verbosity", "settings"]

VerbosityName = Literal["error", "warning", "info", "hint", "debug"]


class Verbosity(IntEnum):
    """Verbosity levels of :attr:`scsig.settings.verbosity` (scanpy's)."""

    error = 0
    warning = 1
    info = 2
    hint = 3
    debug = 4


def to_verbosity(value: object) -> Verbosity:
    """``value`` (0-4, a name such as ``"info"``, or a :class:`Verbosity`) as a :class:`Verbosity`."""
    if isinstance(value, str) and value.lower() in get_args(VerbosityName):
        return Verbosity[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= int(value) <= 4:
        return Verbosity(int(value))
    msg = (
        f"verbosity must be an int from 0 to 4 or one of {list(get_args(VerbosityName))} "
        f"(0 errors, 1 warnings, 2 info, 3 hints, 4 debug), not {value!r}."
    )
    raise ValueError(msg)


class Settings:
    """Settings that every scsig function reads.

    Attributes
    ----------
    verbosity
        0 (``"error"``) errors, 1 (``"warning"``) warnings, 2 (``"info"``) info, 3 (``"hint"``) hints,
        4 (``"debug"``) debug; an int or a name, read back as a :class:`~scsig._settings.Verbosity`.
        Setting it sets the level of the ``"scsig"`` logger, whose lines go to standard error. Until it
        is set, scsig follows ``scanpy.settings.verbosity`` when scanpy has been imported, so that
        ``sc.settings.verbosity = "info"`` shows scsig's info lines too; the default is 1.
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

    def __init__(self) -> None:
        self._verbosity: Verbosity | None = None
        self.n_jobs: int | None = None
        self.device: str = "cpu"
        self.batch_size: int | None = None
        self.memory_budget_gb: float = 1.0
        self.progress: bool = os.environ.get("SCSIG_PROGRESS", "1") != "0"
        self.autoshow: bool = True

    @property
    def verbosity(self) -> Verbosity:
        """Logging verbosity (see the class docstring)."""
        if self._verbosity is not None:
            return self._verbosity
        scanpy = sys.modules.get("scanpy")
        followed = getattr(getattr(scanpy, "settings", None), "verbosity", None)
        if followed is not None:
            try:
                return to_verbosity(int(followed))
            except (TypeError, ValueError):
                pass
        return Verbosity.warning

    @verbosity.setter
    def verbosity(self, value: Verbosity | VerbosityName | int) -> None:
        self._verbosity = to_verbosity(value)
        configure(self._verbosity)

    def __repr__(self) -> str:
        fields = ("verbosity", "n_jobs", "device", "batch_size", "memory_budget_gb", "progress", "autoshow")
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields)
        return f"Settings({inner})"


settings = Settings()
