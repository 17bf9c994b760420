"""Clean-up that a cancelled call cannot cut short.

A cancelled call still has to stop its sandbox, give its session's files back and restore the
engine's capacity. The MCP SDK cancels a request through an anyio cancel scope, which raises
`CancelledError` again at *every* await inside it: a clean-up written as plain awaits after the
first `CancelledError` stops at its first await. `shielded` runs such clean-up to its end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def shielded(work: Awaitable[T]) -> T:
    """Await `work` to its end, even when the calling task is cancelled meanwhile (once, as
    asyncio does, or at every await, as anyio's cancel scopes do); then re-raise that
    cancellation, if one came, else return what `work` returned.

    `work` runs as a task of its own, which no cancellation of the caller reaches; the caller
    waits for it in a shielded anyio scope, so it is not woken over and over meanwhile.

    Raises:
        asyncio.CancelledError: the caller was cancelled while `work` ran (after it ended).
        Exception: whatever `work` raised, when the caller was not cancelled.
    """
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:  # a plain asyncio cancel: keep waiting
                cancelled = exc
    if cancelled is not None:
        if not task.cancelled() and task.exception() is not None:
            raise cancelled from task.exception()
        raise cancelled
    return task.result()
