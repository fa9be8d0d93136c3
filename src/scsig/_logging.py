"""A stdlib logger named ``scsig``, with scanpy-style timing messages.

Its level follows :attr:`scsig.settings.verbosity` and its lines go to the current standard error
through one handler of its own (no change to the root logger, no :func:`logging.basicConfig`). Like
scanpy's logger it does not propagate, so a root handler the user configured does not print scsig's
lines twice; add a handler to ``logging.getLogger("scsig")`` to send them elsewhere as well.
"""

from __future__ import annotations

import logging
import time

from ._loglevel import HINT, LEVELS, configure, logger
from ._settings import settings

__all__ = ["configure", "debug", "hint", "info", "warning"]


def _log(level: int, msg: str, start: float | None = None) -> float:
    now = time.perf_counter()
    if start is not None:
        msg = f"{msg} ({now - start:.2f} s)"
    verbosity = settings.verbosity  # may follow scanpy's, which can change at any time
    if level >= LEVELS[verbosity]:
        if logger.level != LEVELS[verbosity]:
            configure(verbosity)
        logger.log(level, msg)
    return now


def warning(msg: str, *, time: float | None = None) -> float:
    """Log ``msg`` at warning level; returns the current time."""
    return _log(logging.WARNING, msg, time)


def info(msg: str, *, time: float | None = None) -> float:
    """Log ``msg`` at info level; returns a start time for a later closing call."""
    return _log(logging.INFO, msg, time)


def hint(msg: str, *, time: float | None = None) -> float:
    """Log ``msg`` at hint level (verbosity 3); returns the current time."""
    return _log(HINT, msg, time)


def debug(msg: str, *, time: float | None = None) -> float:
    """Log ``msg`` at debug level; returns the current time."""
    return _log(logging.DEBUG, msg, time)
