"""A worker's one long-lived background thread: closing the last call's guest, taking an image,
opening the next guest, at the lowest CPU priority, in the order they were handed in.

It replaces a thread started per call (a start and join with a guest's stack: ~0.13 ms of CPU
alone, against ~0.01 ms to hand a job to this thread). A call to the worker waits for every
job handed in before it (`settle`), so a guest is never left open past the next call's start;
`close` runs what is queued and ends the thread. The thread is started by
`_direct.start_thread`, so guests opened on it run inline, as on the serving thread.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable

from . import _direct, _priority

Job = Callable[[], None]


class Behind:
    """The background thread and its queue of jobs (started on the first job)."""

    def __init__(self, name: str = "behind") -> None:
        self._name = name
        self._jobs: deque[Job] = deque()
        self._pending = 0
        """Jobs handed in and not yet ended (queued, or running)."""
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.tid: int | None = None
        """The thread's native id, once it runs."""
        self._lowered = False
        """Whether the thread last set itself to the lowest priority (guarded by `_ready`)."""
        self._hurry = False
        """A call waits for the jobs: the running one keeps its normal priority."""
        self.jobs_run = 0
        """Jobs ended so far."""

    def submit(self, job: Job) -> None:
        """Queue `job` for the thread (its exceptions are printed, never raised)."""
        with self._ready:
            if self._stopping:
                raise RuntimeError("the background thread was closed")
            self._jobs.append(job)
            self._pending += 1
            self._hurry = False
            self._ready.notify_all()
        if self._thread is None:
            self._thread = _direct.start_thread(self._loop, self._name)

    def settle(self) -> None:
        """Wait until every job handed in has ended. The thread gets its normal priority back
        first, where the process may (a thread at the lowest priority on a busy machine would
        keep the call waiting behind every other process). Each job is bounded by its own
        guest's deadline."""
        with self._ready:
            if self._pending == 0:
                return
            self._hurry = True
            if self._lowered and self.tid is not None:
                _priority.normal_priority(self.tid)
                self._lowered = False
            while self._pending:
                self._ready.wait()

    def close(self) -> None:
        """Run what is queued, then end the thread."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self.settle()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        self.tid = threading.get_native_id()
        while True:
            with self._ready:
                while not self._jobs and not self._stopping:
                    self._ready.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                if not self._hurry and not self._lowered:
                    _priority.lowest_priority()
                    self._lowered = True
            try:
                job()
            except Exception as exc:  # one job failing must not stop the others
                print(f"wasm worker: background job failed: {exc}", file=sys.stderr)
            finally:
                with self._ready:
                    self._pending -= 1
                    self.jobs_run += 1
                    self._ready.notify_all()
