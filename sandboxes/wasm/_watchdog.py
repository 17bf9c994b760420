"""A worker's workspace watchdog: one long-lived thread that measures the folders of the call in
progress while its guest runs, and cancels the guest once one passes its budget (WASI has no
file-size quota).

A thread started and joined per call cost the serving thread ~0.12 ms of CPU per call (issue
#17); the watchdog's thread is started once, on the first call that has folders to watch (and
again if it ever died), and is handed each call's folders in turn. A call's watch ends before
`watching` returns: the thread has then let go of the call's `cancel` and `over` and measures
nothing more of it, so a later call is never cancelled for an earlier one's folders.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .._files import DiskUsage, disk_usage

WATCH_EVERY_S = 0.02
"""How often a call's folders are measured while its guest runs (at least; slower when one
measure takes longer than a quarter of it)."""

Watched = tuple[str, int, int | None]
"""A folder, the bytes of disk it may occupy, the inodes it may hold (None: no cap)."""


@dataclass(frozen=True, slots=True)
class _Job:
    """One call's watch: its folders, the event that stops its guest, and where the size that
    passed a budget is put."""

    folders: tuple[Watched, ...]
    cancel: threading.Event
    over: list[int]
    finished: threading.Event = field(default_factory=threading.Event)
    """Set by the call when its guest has ended."""
    released: threading.Event = field(default_factory=threading.Event)
    """Set by the watchdog's thread when it no longer touches this call."""


class Watchdog:
    """The thread that watches each call's folders in turn; one call at a time."""

    def __init__(self, measure: Callable[..., DiskUsage] = disk_usage) -> None:
        self._measure = measure
        self._wake = threading.Condition()
        self._job: _Job | None = None
        """The call handed to the thread, until the thread takes it."""
        self._busy = False
        """A call is being watched: from its hand-over until its watch returns."""
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(self, folders: list[Watched], cancel: threading.Event) -> Iterator[list[int]]:
        """Watch `folders` until the block ends, setting `cancel` once one of them occupies more
        than its bytes of disk or holds more than its inodes (walked by descriptor,
        `disk_usage`); yields the list the size that passed is put in (empty: none did)."""
        over: list[int] = []
        if not folders:
            yield over
            return
        job = _Job(tuple(folders), cancel, over)
        with self._wake:
            if self._busy:
                raise RuntimeError("the watchdog already watches a call; one at a time")
            self._busy, self._job = True, job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="watchdog", daemon=True)
                self._thread.start()
            self._wake.notify()
        try:
            yield over
        finally:
            job.finished.set()
            job.released.wait()  # as a join: the thread lets go of the call before it returns
            with self._wake:
                self._busy = False

    def _serve(self) -> None:
        while True:
            with self._wake:
                while self._job is None:
                    self._wake.wait()
                job, self._job = self._job, None
            try:
                self._watch(job)
            finally:
                job.released.set()

    def _watch(self, job: _Job) -> None:
        pause = WATCH_EVERY_S
        while not job.finished.wait(pause):
            began = time.perf_counter()
            for folder, budget, max_files in job.folders:
                held = self._measure(Path(folder), stop_after_files=max_files)
                if (
                    held.bytes > budget
                    or not held.complete
                    or (max_files and held.files > max_files)
                ):
                    job.over.append(held.bytes)
                    job.cancel.set()
                    return
            pause = max(WATCH_EVERY_S, 4 * (time.perf_counter() - began))
