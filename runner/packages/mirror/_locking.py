"""One writer at a time per folder: a thread lock plus an OS lock on the folder, bounded wait.

The OS lock is `flock` on the folder's own descriptor, so no lock file is left anywhere.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._errors import MirrorBusy

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the thread lock alone
    fcntl = None  # type: ignore[assignment]

LOCK_WAIT_S = 120.0
"""Longest wait for another sync or install of the same folder (seconds)."""
_POLL_S = 0.05

_registry_guard = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


def _thread_lock(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _registry_guard:
        return _thread_locks.setdefault(key, threading.Lock())


@contextmanager
def folder_lock(folder: Path, *, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold `folder` exclusively: against other threads of this process and other processes.

    Args:
        folder: An existing folder.
        wait_s: Longest wait before giving up.

    Raises:
        MirrorBusy: Someone else held it for `wait_s`.
    """
    started = time.monotonic()
    local = _thread_lock(folder)
    if not local.acquire(timeout=wait_s):
        raise MirrorBusy(folder=folder, waited_s=time.monotonic() - started)
    try:
        if fcntl is None:
            yield
            return
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(folder, flags)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - started
                    if waited >= wait_s:
                        raise MirrorBusy(folder=folder, waited_s=waited) from None
                    time.sleep(_POLL_S)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        local.release()
