"""The atlas writer lock: one writer at a time, on POSIX (fcntl) and Windows (msvcrt)."""

from __future__ import annotations

import sys
import threading
import time
import types

from scsig.atlas import _manifest as mf


def test_writer_lock_serializes_writers(tmp_path):
    order: list[str] = []
    held = threading.Event()

    def second():
        held.wait(5)
        with mf.writer_lock(tmp_path):
            order.append("second in")

    t = threading.Thread(target=second)
    with mf.writer_lock(tmp_path):
        t.start()
        held.set()
        time.sleep(0.3)  # the second writer is waiting on the lock by now
        order.append("first out")
    t.join(5)
    assert order == ["first out", "second in"]
    assert (tmp_path / mf.LOCK).exists()


def test_writer_lock_windows_branch_waits_and_releases(tmp_path, monkeypatch):
    calls: list[tuple[int, int]] = []
    busy = [2]  # another process holds the lock for the first two attempts

    def locking(fd, mode, nbytes):
        calls.append((mode, nbytes))
        if mode == fake.LK_NBLCK and busy[0]:
            busy[0] -= 1
            raise OSError("locked")

    fake = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError, as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    with (tmp_path / mf.LOCK).open("a+b") as fh:
        release = mf._acquire(fh, poll=0.001)
        assert calls == [(fake.LK_NBLCK, 1)] * 3
        release()
    assert calls[-1] == (fake.LK_UNLCK, 1)
