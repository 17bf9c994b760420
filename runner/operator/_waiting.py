"""Calls waiting for an operator's approval: what the console lists, and how a held call wakes.

The state store is the truth about an approval (pending, approved, denied); this room only
keeps, in this process, the calls that asked (their arguments and code, which the audit never
stores), the operator's note, and an event per approval so that an answer given through this
server wakes the held call at once. An answer from another process (`sandgate approve`) is
seen by polling the store every `POLL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from policies import NeedsApproval, ToolCall

POLL_S = 1.0
"""How often a held call looks in the state store for an answer given by another process."""
MAX_KEPT = 1000
"""Approval requests kept for the console; the oldest go first."""


@dataclass(frozen=True, slots=True)
class PendingApproval:
    """One call that needs a human's answer.

    Attributes:
        approval_id: What the operator approves or denies.
        call: The call as asked (tool, arguments, grant, session, program).
        rule: The rule that asked for approval.
        reason: The sentence the client was shown.
        asked_at: Unix time the request was first made.
        expires_at: Unix time after which it can no longer be answered.
        held: Calls of its client held open waiting for the answer now.
    """

    approval_id: str
    call: ToolCall
    rule: str
    reason: str
    asked_at: float
    expires_at: float
    held: int


@dataclass(slots=True)
class _Entry:
    need: NeedsApproval
    call: ToolCall
    asked_at: float
    held: int = 0
    note: str | None = None
    answered: bool = False
    events: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)


class ApprovalRoom:
    """The approval requests this server has seen, and the calls held for their answers.

    Args:
        clock: Unix time source.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def asked(self, need: NeedsApproval, call: ToolCall) -> None:
        """Remember a request (a repeat of the same call keeps its first time)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(need.approval_id)
            if entry is None:
                self._entries[need.approval_id] = _Entry(need, call, now)
            self._prune(now)

    def _prune(self, now: float) -> None:
        gone = [k for k, e in self._entries.items() if e.need.expires_at <= now and not e.held]
        for key in gone:
            del self._entries[key]
        while len(self._entries) > MAX_KEPT:
            del self._entries[next(iter(self._entries))]

    def answered(self, approval_id: str, note: str | None = None) -> None:
        """An answer was given here: keep its note and wake the calls held for it."""
        with self._lock:
            entry = self._entries.get(approval_id)
            if entry is None:
                return
            entry.answered = True
            entry.note = note
            events = list(entry.events)
        for loop, event in events:
            loop.call_soon_threadsafe(event.set)

    def note(self, approval_id: str) -> str | None:
        """The note the operator gave with their answer here, if any."""
        with self._lock:
            entry = self._entries.get(approval_id)
            return None if entry is None else entry.note

    def listing(self) -> list[PendingApproval]:
        """Requests not answered here and not expired, oldest first."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            return [
                PendingApproval(
                    key,
                    e.call,
                    e.need.rule,
                    e.need.reason,
                    e.asked_at,
                    e.need.expires_at,
                    e.held,
                )
                for key, e in self._entries.items()
                if not e.answered and e.need.expires_at > now
            ]

    def settled(self, approval_id: str) -> None:
        """The store says it is no longer pending (answered elsewhere, used, expired)."""
        with self._lock:
            entry = self._entries.get(approval_id)
            if entry is not None:
                entry.answered = True

    async def wait(
        self, approval_id: str, seconds: float, answered: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Hold the caller up to `seconds` until `approval_id` is answered: at once when it is
        answered here, within `POLL_S` when `answered()` (the store) says so. True if it was."""
        event = asyncio.Event()
        mark = (asyncio.get_running_loop(), event)
        with self._lock:
            entry = self._entries.get(approval_id)
            if entry is None:
                return False
            if entry.answered:
                return True
            entry.held += 1
            entry.events.append(mark)
        deadline = time.monotonic() + seconds
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(POLL_S, remaining))
                if event.is_set() or await answered():
                    return True
        finally:
            with self._lock:
                entry.held -= 1
                entry.events.remove(mark)
