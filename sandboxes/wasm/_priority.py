"""A thread's CPU priority: the lowest for a worker's background work (closing the last
call's guest, preparing or imaging the next, building a derived module), and back to normal
when a call waits for it."""

from __future__ import annotations

import contextlib
import os
import threading


def lowest_priority() -> None:
    """This thread (and the threads it starts) runs only when nothing else wants the CPU:
    SCHED_IDLE, else nice 19 (Linux: both are per thread)."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, tid, 19)


def normal_priority(tid: int) -> None:
    """Thread `tid` back at the normal policy (SCHED_OTHER), where the process may (Linux lets
    an unprivileged thread leave SCHED_IDLE only within its RLIMIT_NICE); else left as it is."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
