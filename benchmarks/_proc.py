"""CPU seconds of a process and of its descendants (psutil), for the benchmarks that split a
server's own CPU from its engine workers' and the client's."""

from __future__ import annotations

import asyncio
import contextlib
import time

import psutil

QUIET_EVERY_S = 0.25
QUIET_CPU_S = 0.02
"""A server has finished starting once its descendants spend less than this much CPU in a
`QUIET_EVERY_S` window while no call runs."""
QUIET_WAIT_S = 30.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid`, every thread of it, none of its children."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def descendants_cpu_s(pid: int) -> float:
    """CPU seconds of `pid`'s live descendants (its engine workers) and of the children it has
    reaped (a worker replaced during the run)."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.children_user + times.children_system
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone since it was listed
            own = child.cpu_times()
            total += own.user + own.system
    return float(total)


class CpuSplit:
    """CPU seconds spent between `start` and `stop` by a server process, its descendants
    (engine workers) and this process (the benchmark's clients)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server_s = self.workers_s = self.client_s = 0.0

    def start(self) -> None:
        self.server_s = -process_cpu_s(self.pid)
        self.workers_s = -descendants_cpu_s(self.pid)
        self.client_s = -time.process_time()

    def stop(self) -> None:
        self.server_s += process_cpu_s(self.pid)
        self.workers_s += descendants_cpu_s(self.pid)
        self.client_s += time.process_time()

    def per_call_ms(self, calls: int) -> str:
        """`server CPU … workers CPU … client CPU …`, each in ms per call."""
        return (
            f"server CPU {self.server_s / calls * 1000:5.2f} ms/call  "
            f"workers CPU {self.workers_s / calls * 1000:5.2f} ms/call  "
            f"client CPU {self.client_s / calls * 1000:5.2f} ms/call"
        )


async def settled(pid: int) -> float:
    """Wait until `pid`'s descendants are quiet (`QUIET_CPU_S` per `QUIET_EVERY_S`), at most
    `QUIET_WAIT_S`; the seconds waited. A server answers calls once its first wasm worker is
    ready; its other workers, and the process it keeps warm for persistent sessions, start
    after that, in the background: measured from the end of the warm-up calls, their start-up
    (~0.5 s of CPU each) was counted as calls' CPU, ~4 ms of the workers' CPU per call in a
    400-call run of `load_http.py --clients 8`."""
    began = time.monotonic()
    while time.monotonic() - began < QUIET_WAIT_S:
        before = descendants_cpu_s(pid)
        await asyncio.sleep(QUIET_EVERY_S)
        if descendants_cpu_s(pid) - before < QUIET_CPU_S:
            break
    return time.monotonic() - began
