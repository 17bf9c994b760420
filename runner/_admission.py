"""Fair admission of runs to the engines: bounded waiting, round-robin across grants, and a
slot kept for other grants while one grant holds the rest."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

DEFAULT_MAX_WAITING = 256
DEFAULT_MAX_WAITING_PER_GRANT = 64
RETRY_AFTER_S = 1.0
ACTIVE_S = 1.0
"""A grant that asked for a slot this recently counts as active: another grant does not take
the last free slot from it."""
RECHECK_S = 0.25
"""How often calls held back for an active grant look again (that grant may have gone quiet)."""


class Busy(Exception):
    """Too many calls are waiting; the caller should retry after `retry_after_s` seconds."""

    def __init__(self, message: str, *, retry_after_s: float = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Admission:
    """Admits at most `slots` runs at once, shared fairly between grants.

    - Waiting calls are served one grant at a time in turn, so a grant that floods the server
      waits behind its own calls, not others'; a freed slot goes first to a waiting grant
      that runs fewer than its share (`slot(share=…)`) of the slots.
    - While another grant is active (asked for a slot in the last `ACTIVE_S`), one grant never
      holds more than `slots - 1`: the last slot stays free for the others, so a quiet
      client's call starts at once even when a flood holds the rest.
    - The waiting room is bounded, in all and per grant: past it, `Busy` goes to the grant
      that filled it.

    Args:
        slots: Runs at once (the engines' worker count).
        max_waiting: Calls that may wait in all before new ones get `Busy`.
        max_waiting_per_grant: Calls one grant may have waiting before its new ones get `Busy`.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        slots: int,
        *,
        max_waiting: int = DEFAULT_MAX_WAITING,
        max_waiting_per_grant: int = DEFAULT_MAX_WAITING_PER_GRANT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots: expected at least 1, got {slots}")
        self._slots = slots
        self._free = slots
        self._max_waiting = max_waiting
        self._max_per_grant = max_waiting_per_grant
        self._clock = clock
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._caps: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._asked: dict[str, float] = {}
        self._count = 0
        self._recheck: asyncio.TimerHandle | None = None

    @property
    def slots(self) -> int:
        """Runs admitted at once."""
        return self._slots

    @property
    def free(self) -> int:
        """Slots free now."""
        return self._free

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return self._count

    def running(self, grant: str) -> int:
        """Runs `grant` holds a slot for now."""
        return self._running.get(grant, 0)

    @asynccontextmanager
    async def slot(self, grant: str, share: float = 1.0) -> AsyncIterator[None]:
        """Hold one run slot for `grant` while inside.

        Args:
            grant: Who runs.
            share: The fraction of the slots `grant` may hold while other grants wait.

        Raises:
            Busy: the waiting room (in all, or for this grant) is full.
        """
        self._caps[grant] = max(1, int(self._slots * share))
        await self._acquire(grant)
        try:
            yield
        finally:
            self._release(grant)

    async def _acquire(self, grant: str) -> None:
        now = self._clock()
        self._asked[grant] = now
        if self._free > 0 and self._count == 0 and not self._held_back(grant, now):
            self._take(grant)
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
        self._dispatch()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release(grant)  # a slot was handed over as we were cancelled: pass it on
            else:
                self._forget(grant, future)
            raise

    def _take(self, grant: str) -> None:
        self._free -= 1
        self._running[grant] = self._running.get(grant, 0) + 1

    def _held_back(self, grant: str, now: float) -> bool:
        """Whether `grant` must leave the last free slot to another, active grant."""
        if self._slots < 2 or self._running.get(grant, 0) < self._slots - 1:
            return False
        return any(g != grant and now - t < ACTIVE_S for g, t in self._asked.items())

    def _forget(self, grant: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(grant)
        if queue is not None and future in queue:
            queue.remove(future)
            self._count -= 1
            if not queue:
                del self._waiting[grant]

    def _next_grant(self, now: float) -> str | None:
        """The waiting grant to serve next: the first in turn that runs fewer than its share
        of the slots, else the first in turn; never one held back (None if all are)."""
        eligible = [g for g in self._waiting if not self._held_back(g, now)]
        for grant in eligible:
            if self._running.get(grant, 0) < self._caps.get(grant, self._slots):
                return grant
        return eligible[0] if eligible else None

    def _release(self, grant: str) -> None:
        """`grant` gives its slot back; it goes to the next waiting call, or becomes free."""
        left = self._running.get(grant, 0) - 1
        if left > 0:
            self._running[grant] = left
        else:
            self._running.pop(grant, None)
        self._free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiting calls, in turn; look again later for held-back ones."""
        now = self._clock()
        cutoff = now - ACTIVE_S
        for quiet in [g for g, t in self._asked.items() if t < cutoff]:
            del self._asked[quiet]
        while self._free > 0 and self._waiting:
            turn = self._next_grant(now)
            if turn is None:
                self._recheck_later()
                return
            queue = self._waiting.pop(turn)
            future = queue.popleft()
            self._count -= 1
            if queue:
                self._waiting[turn] = queue  # to the back of the round
            if not future.done():
                future.set_result(None)
                self._take(turn)

    def _recheck_later(self) -> None:
        if self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(RECHECK_S, self._rechecked)

    def _rechecked(self) -> None:
        self._recheck = None
        self._dispatch()
