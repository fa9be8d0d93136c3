"""OS file locks taken without waiting (``flock`` on POSIX, a byte-range lock on Windows).

The OS releases such a lock when its holder dies, so a lock that can be taken marks work whose
writer is gone: the atlas's staging folders and a model save's staging folder use this to tell a
live writer's files from a dead one's leftovers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["try_lock"]


def try_lock(fh: Any) -> Callable[[], None] | None:
    """Take an exclusive OS lock on ``fh`` without waiting; the release function, or None if held elsewhere."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        fh.seek(0)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return None

        def unlock() -> None:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

        return unlock
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None
    return lambda: fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
