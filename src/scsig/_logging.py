"""A stdlib logger named ``scsig``, with scanpy-style timing messages."""

from __future__ import annotations

import logging
import time

from ._settings import settings

_logger = logging.getLogger("scsig")

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.INFO, 4: logging.DEBUG}


def _log(level: int, msg: str, start: float | None = None) -> float:
    now = time.perf_counter()
    if start is not None:
        msg = f"{msg} ({now - start:.2f} s)"
    if level >= _LEVELS.get(settings.verbosity, logging.WARNING):
        _logger.log(level, msg)
    return now


def info(msg: str, *, time: float | None = None) -> float:
    """Log ``msg`` at info level; returns a start time for a later closing call."""
    return _log(logging.INFO, msg, time)


def debug(msg: str, *, time: float | None = None) -> float:
    """Log ``msg`` at debug level; returns the current time."""
    return _log(logging.DEBUG, msg, time)
