"""The warm pool: started containers waiting for one run each, refilled in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._sandbox import Sandbox
from ._spec import Shape
from ._workspace import Slot

logger = logging.getLogger("sandgate.container")


@dataclass(frozen=True, slots=True)
class Warm:
    """A started container, its slot folders (None when it mounts a session directly), and the
    limits it was created with."""

    sandbox: Sandbox
    slot: Slot | None
    shape: Shape


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A view of the pool.

    Attributes:
        idle: Warm containers waiting for a run.
        starting: Containers being started for the pool.
        warm_runs: Runs served by a warm container.
        cold_runs: Runs that had to start their own container (including runs handed a pool
            container that could not take them, which are not counted warm).
        retried_runs: Runs moved to a fresh container because theirs was dead before the
            code reached it (each also counted in `cold_runs`).
    """

    idle: int
    starting: int
    warm_runs: int
    cold_runs: int
    retried_runs: int


Launch = Callable[[Shape], Awaitable[Warm]]
Dispose = Callable[[Warm], Awaitable[None]]


class Pool:
    """Keeps up to `size` warm containers of the current shape; lets them go after `idle_s`
    seconds without demand (the next run starts cold and the pool refills).

    Args:
        launch: Starts one pool container of a shape.
        dispose: Removes a container and its slot.
        size: Warm containers to keep.
        idle_s: Seconds without a run after which idle containers are removed.
    """

    def __init__(self, launch: Launch, dispose: Dispose, *, size: int, idle_s: float) -> None:
        self._launch = launch
        self._dispose = dispose
        self._size = size
        self._idle_s = idle_s
        self._idle: deque[Warm] = deque()
        self._starting = 0
        self._waiting = 0
        self._shape: Shape | None = None
        self._last_demand = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._closed = False
        self.warm_runs = 0
        self.cold_runs = 0
        self.retried_runs = 0

    def stats(self) -> PoolStats:
        return PoolStats(
            len(self._idle), self._starting, self.warm_runs, self.cold_runs, self.retried_runs
        )

    def moved_cold(self, *, was_warm: bool, retried: bool) -> None:
        """A run left the container it was given for one it started itself: count it cold
        (`was_warm`: `take` had counted it warm), and as retried when its container was dead.
        """
        if was_warm:
            self.warm_runs -= 1
            self.cold_runs += 1
        if retried:
            self.retried_runs += 1

    def passed_by(self) -> None:
        """A run that cannot take a pool container (an egress run's container is lent the
        proxy, and pool containers never are): count it cold, leave the pool's aim alone."""
        self.cold_runs += 1

    def idle_ids(self) -> frozenset[str]:
        return frozenset(w.sandbox.id for w in self._idle)

    def fill(self, shape: Shape) -> None:
        """Aim the pool at `shape` (dropping idle containers of another) and top it up."""
        self._aim(shape)
        self._top_up()

    def replenish(self) -> None:
        """Top the pool up; the engine calls it when a run ends, so that starting containers
        (CPU-heavy for dockerd and the runtime) does not compete with the run itself."""
        self._last_demand = time.monotonic()
        self._top_up()

    def _aim(self, shape: Shape) -> None:
        self._last_demand = time.monotonic()
        if shape != self._shape:
            self._shape = shape
            while self._idle:
                self._spawn(self._dispose(self._idle.popleft()))

    async def take(self, shape: Shape) -> Warm | None:
        """A live idle container of `shape`; when none is idle but one is starting, waits for
        it (it is ready sooner than a new one); None when the caller must start its own. The
        pool is topped up by `replenish`, after the run, or at once when idle containers turn
        out dead (dockerd restarted, or something killed them)."""
        self._aim(shape)
        while True:
            if self._drop_dead():
                self._top_up()
            now = time.monotonic()
            while self._idle:
                warm = self._idle.popleft()
                if now - warm.sandbox.ready_at <= self._idle_s:
                    self.warm_runs += 1
                    return warm
                self._spawn(self._dispose(warm))
            if self._waiting >= self._starting:
                self.cold_runs += 1
                return None
            self._waiting += 1
            try:
                self._changed.clear()
                await self._changed.wait()
            finally:
                self._waiting -= 1

    async def wait_full(self, timeout_s: float) -> bool:
        """Wait until the pool holds `size` idle containers; False when time ran out."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self._idle) < self._size:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def _drop_dead(self) -> int:
        """Remove idle containers whose process is gone; how many."""
        dead = [w for w in self._idle if not w.sandbox.alive()]
        for warm in dead:
            logger.info("container: pool container %s died while idle", warm.sandbox.id[:12])
            self._idle.remove(warm)
            self._spawn(self._dispose(warm))
        return len(dead)

    def _top_up(self) -> None:
        if self._closed or self._shape is None:
            return
        while len(self._idle) + self._starting < self._size:
            self._starting += 1
            self._spawn(self._grow(self._shape))

    async def _grow(self, shape: Shape) -> None:
        try:
            warm = await self._launch(shape)
        except Exception as exc:  # a failed refill is retried on the next demand
            logger.warning("container: could not start a pool container: %s", exc)
            return
        finally:
            self._starting -= 1
            self._changed.set()
        if self._closed or shape != self._shape:
            await self._dispose(warm)
            return
        self._idle.append(warm)
        self._changed.set()

    async def reap(self) -> None:
        """Forever: remove idle containers that died or are older than `idle_s`; refill only
        while in demand."""
        period = max(0.5, min(self._idle_s / 2, 30.0))
        while not self._closed:
            await asyncio.sleep(period)
            self._drop_dead()
            now = time.monotonic()
            while self._idle and now - self._idle[0].sandbox.ready_at > self._idle_s:
                self._spawn(self._dispose(self._idle.popleft()))
            if now - self._last_demand < self._idle_s:
                self._top_up()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop refilling and remove every idle container; containers still starting are
        removed as soon as they are up, and removals in flight complete."""
        self._closed = True
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        idle, self._idle = list(self._idle), deque()
        await asyncio.gather(*(self._dispose(w) for w in idle), return_exceptions=True)
