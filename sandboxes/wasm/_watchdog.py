"""A worker's workspace watchdog: one long-lived thread that measures the folders of the call in
progress while its guest runs, and cancels the guest once one passes its budget (WASI has no
file-size quota).

A thread started and joined per call cost the serving thread ~0.12 ms of CPU per call (issue
#17); the watchdog's thread is started once, on the first call that has folders to watch (and
again if it ever died), and measures each call's folders in turn, the first time
`WATCH_EVERY_S` after the call's watch began. A call is not handed over to it: the call is
put where the thread looks, and the thread is woken only when it would otherwise sleep past
the call's first measure (it waits for nothing, or for a later time). Back to back, calls that
end within `WATCH_EVERY_S` then cost the thread no wake of its own, instead of two hand-offs per
call (a wake at the start, and at the end a wake and a wait for its answer: ~0.3 ms of the
worker's CPU a call).

A call's watch ends before `watching` returns: the thread measures a call only while the call
is the one in progress, marked as being measured, and a watch that ends during a measure waits
for it; so once `watching` has returned the thread touches nothing of that call (its `cancel`
and `over`), and a later call is never cancelled for an earlier one's folders.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .._files import DiskUsage, disk_usage

WATCH_EVERY_S = 0.02
"""How often a call's folders are measured while its guest runs (at least; slower when one
measure takes longer than a quarter of it)."""

Watched = tuple[str, int, int | None]
"""A folder, the bytes of disk it may occupy, the inodes it may hold (None: no cap)."""


@dataclass(slots=True)
class _Job:
    """One call's watch: its folders, the event that stops its guest, where the size that
    passed a budget is put, and when (`time.monotonic`) its folders are next measured (never
    again once one passed its budget)."""

    folders: tuple[Watched, ...]
    cancel: threading.Event
    over: list[int]
    due: float


class Watchdog:
    """The thread that watches each call's folders in turn; one call at a time."""

    def __init__(
        self, measure: Callable[..., DiskUsage] = disk_usage, every_s: float = WATCH_EVERY_S
    ) -> None:
        self._measure = measure
        self._every_s = every_s
        self._lock = threading.Condition()
        self._job: _Job | None = None
        """The call being watched, from the start of its watch until its end."""
        self._measuring: _Job | None = None
        """The call whose folders the thread measures now (outside the lock)."""
        self._wakes_at = math.inf
        """When the thread next looks at `_job` by itself (`time.monotonic`; inf: it waits to
        be woken, or is not running)."""
        self._thread: threading.Thread | None = None
        self.wakes = 0
        """Times the thread was woken by a call (its own timed wakes not counted)."""

    @contextmanager
    def watching(self, folders: list[Watched], cancel: threading.Event) -> Iterator[list[int]]:
        """Watch `folders` until the block ends, setting `cancel` once one of them occupies more
        than its bytes of disk or holds more than its inodes (walked by descriptor,
        `disk_usage`); yields the list the size that passed is put in (empty: none did)."""
        over: list[int] = []
        if not folders:
            yield over
            return
        job = _Job(tuple(folders), cancel, over, time.monotonic() + self._every_s)
        with self._lock:
            if self._job is not None:
                raise RuntimeError("the watchdog already watches a call; one at a time")
            self._job = job
            if self._thread is None or not self._thread.is_alive():
                self._wakes_at = math.inf
                self._thread = threading.Thread(target=self._serve, name="watchdog", daemon=True)
                self._thread.start()
            elif job.due < self._wakes_at:  # it would sleep past the first measure
                self.wakes += 1
                self._wakes_at = -math.inf  # it looks at the call in progress once it runs
                self._lock.notify()
        try:
            yield over
        finally:
            with self._lock:
                self._job = None
                while self._measuring is job:  # as a join: let go of the call first
                    self._lock.wait()

    def _serve(self) -> None:
        with self._lock:
            try:
                while True:
                    job = self._job
                    now = time.monotonic()
                    if job is None or job.due == math.inf:
                        self._wakes_at = math.inf
                        self._lock.notify_all()  # (for a test observing when it waits)
                        self._lock.wait()
                    elif now < job.due:
                        self._wakes_at = job.due
                        self._lock.notify_all()
                        self._lock.wait(job.due - now)
                    else:
                        self._wakes_at = math.inf  # measuring: the call's end waits for it
                        self._measuring = job
                        self._lock.release()
                        try:
                            job.due = self._watch(job)
                        finally:
                            self._lock.acquire()
                            self._measuring = None
                            self._lock.notify_all()
            finally:
                self._wakes_at = math.inf

    def _watch(self, job: _Job) -> float:
        """Measure `job`'s folders once, cancelling it if one is past its budget; when to
        measure them next."""
        began = time.perf_counter()
        for folder, budget, max_files in job.folders:
            held = self._measure(Path(folder), stop_after_files=max_files)
            if held.bytes > budget or not held.complete or (max_files and held.files > max_files):
                job.over.append(held.bytes)
                job.cancel.set()
                return math.inf
        took = time.perf_counter() - began
        return time.monotonic() + max(self._every_s, 4 * took)
