"""A stdlib logger named ``scsig``, with scanpy-style timing messages.

Its level follows :attr:`scsig.settings.verbosity` and its lines go to the current standard error
through one handler of its own (no change to the root logger, no :func:`logging.basicConfig`). Like
scanpy's logger it does not propagate, so a root handler the user configured does not print scsig's
lines twice; add a handler to ``logging.getLogger("scsig")`` to send them elsewhere as well.
"""

from __future__ import annotations

import logging
import sys
import time

from ._settings import Verbosity, settings

__all__ = ["configure", "debug", "hint", "info", "warning"]

_logger = logging.getLogger("scsig")

HINT = (logging.INFO + logging.DEBUG) // 2

_LEVELS = {
    Verbosity.error: logging.ERROR,
    Verbosity.warning: logging.WARNING,
    Verbosity.info: logging.INFO,
    Verbosity.hint: HINT,
    Verbosity.debug: logging.DEBUG,
}


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


def configure(verbosity: Verbosity) -> None:
    """Set the ``scsig`` logger's level from ``verbosity`` and give it its stderr handler (once)."""
    _logger.setLevel(_LEVELS[verbosity])
    if not any(isinstance(h, _StderrHandler) for h in _logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        _logger.addHandler(handler)
        _logger.propagate = False


def _log(level: int, msg: str, start: float | None = None) -> float:
    now = time.perf_counter()
    if start is not None:
        msg = f"{msg} ({now - start:.2f} s)"
    verbosity = settings.verbosity  # may follow scanpy's, which can change at any time
    if level >= _LEVELS[verbosity]:
        if _logger.level != _LEVELS[verbosity]:
            configure(verbosity)
        _logger.log(level, msg)
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
