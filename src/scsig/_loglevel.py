"""The ``scsig`` logger itself: its level (from a verbosity) and its one standard-error handler.

The lowest piece of logging: :mod:`scsig._settings` sets the level when ``verbosity`` is set, and
:mod:`scsig._logging` writes the messages; neither imports the other's caller.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["HINT", "LEVELS", "configure", "logger"]

logger = logging.getLogger("scsig")

HINT = (logging.INFO + logging.DEBUG) // 2

LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: HINT, 4: logging.DEBUG}
"""Verbosity (0 error ... 4 debug, as :class:`scsig._settings.Verbosity`) -> logging level."""


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a notebook's, pytest's capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbosity: int) -> None:
    """Set the ``scsig`` logger's level from ``verbosity`` and give it its stderr handler (once)."""
    logger.setLevel(LEVELS[verbosity])
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
