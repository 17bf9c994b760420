"""A pool of booted, never-used Pyodide processes, refilled in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from .._errors import EngineUnavailable
from ._process import DenoProcess

logger = logging.getLogger("sandgate.pyodide")

Spawn = Callable[[], Awaitable[DenoProcess]]
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
FAILURES_BEFORE_UNAVAILABLE = 2


class Pool:
    """Keeps `size` booted processes idle. A process leaves the pool once, for one session
    (or one fresh run), and never comes back: a used interpreter is never handed to anyone
    else."""

    def __init__(self, spawn: Spawn, *, size: int, progress: Callable[[str], None]) -> None:
        self._spawn = spawn
        self._size = size
        self._progress = progress
        self._idle: list[DenoProcess] = []
        self._changed = asyncio.Condition()
        self._wanted = 0
        self._failed: str | None = None
        self._failures = 0
        self._filler: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._filler is None:
            self._filler = asyncio.create_task(self._fill())

    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self._idle)

    def _target(self) -> int:
        return max(self._size, self._wanted)

    async def _fill(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._idle) < self._target())
            began = time.monotonic()
            try:
                process = await self._spawn()
            except Exception as exc:  # reported to every waiting taker, retried with backoff
                self._failures += 1
                message = f"a Pyodide process failed to start: {type(exc).__name__}: {exc}"
                logger.warning("pyodide: %s", message)
                if self._failures >= FAILURES_BEFORE_UNAVAILABLE:
                    async with self._changed:
                        self._failed = message
                        self._changed.notify_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay, self._failures = RETRY_FIRST_S, 0
            async with self._changed:
                self._failed = None
                self._idle.append(process)
                self._changed.notify_all()
            took = time.monotonic() - began
            logger.debug("pyodide: process %d booted in %.2f s", process.pid, took)

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until a process is idle (or the pool keeps failing)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: bool(self._idle) or self._failed is not None)
            if not self._idle and self._failed is not None:
                raise EngineUnavailable(self._failed)

    async def take(self, timeout_s: float) -> DenoProcess:
        """A booted process for a new session; waits for one if none is idle.

        Raises:
            TimeoutError: none booted within `timeout_s`.
            EngineUnavailable: processes keep failing to start.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                async with self._changed:
                    self._wanted += 1
                    self._changed.notify_all()
                    try:
                        await self._changed.wait_for(
                            lambda: bool(self._idle) or self._failed is not None
                        )
                    finally:
                        self._wanted -= 1
                    if not self._idle:
                        raise EngineUnavailable(self._failed or "no Pyodide process")
                    process = self._idle.pop(0)
                    self._changed.notify_all()
                if process.alive:
                    return process
                await process.kill()

    async def aclose(self) -> None:
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(BaseException):
                await self._filler
        idle, self._idle = self._idle, []
        await asyncio.gather(*(p.kill() for p in idle), return_exceptions=True)
