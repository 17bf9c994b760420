"""Fair admission of runs to the engines: bounded waiting, round-robin across grants."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

DEFAULT_MAX_WAITING = 256
DEFAULT_MAX_WAITING_PER_GRANT = 64
RETRY_AFTER_S = 1.0


class Busy(Exception):
    """Too many calls are waiting; the caller should retry after `retry_after_s` seconds."""

    def __init__(self, message: str, *, retry_after_s: float = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Admission:
    """Admits at most `slots` runs at once. Waiting calls are served one grant at a time in
    turn, so a grant that floods the server waits behind its own calls, not others'.

    Args:
        slots: Runs at once (the engines' worker count).
        max_waiting: Calls that may wait in all before new ones get `Busy`.
        max_waiting_per_grant: Calls one grant may have waiting before its new ones get `Busy`.
    """

    def __init__(
        self,
        slots: int,
        *,
        max_waiting: int = DEFAULT_MAX_WAITING,
        max_waiting_per_grant: int = DEFAULT_MAX_WAITING_PER_GRANT,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots: expected at least 1, got {slots}")
        self._free = slots
        self._max_waiting = max_waiting
        self._max_per_grant = max_waiting_per_grant
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._count = 0

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return self._count

    @asynccontextmanager
    async def slot(self, grant: str) -> AsyncIterator[None]:
        """Hold one run slot for `grant` while inside.

        Raises:
            Busy: the waiting room (in all, or for this grant) is full.
        """
        await self._acquire(grant)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, grant: str) -> None:
        if self._free > 0 and self._count == 0:
            self._free -= 1
            return
        queue = self._waiting.get(grant)
        if self._count >= self._max_waiting:
            raise Busy(f"the server is busy ({self._count} calls waiting); retry in a second")
        if queue is not None and len(queue) >= self._max_per_grant:
            raise Busy(
                f"your client already has {len(queue)} calls waiting (at most "
                f"{self._max_per_grant}); retry once some have finished"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if queue is None:
            queue = self._waiting[grant] = deque()
        queue.append(future)
        self._count += 1
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release()  # a slot was handed over as we were cancelled: pass it on
            else:
                self._forget(grant, future)
            raise

    def _forget(self, grant: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(grant)
        if queue is not None and future in queue:
            queue.remove(future)
            self._count -= 1
            if not queue:
                del self._waiting[grant]

    def _release(self) -> None:
        while self._waiting:
            grant, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            self._count -= 1
            del self._waiting[grant]
            if queue:
                self._waiting[grant] = queue  # to the back of the round
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
