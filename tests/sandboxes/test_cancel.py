"""`shielded`: clean-up runs to its end however its caller is cancelled, then the cancel goes on."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from sandboxes._cancel import shielded

pytestmark = pytest.mark.anyio

BOUND_S = 10.0


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class _CleanUp:
    """Three awaits in a row (each a cancellation point), recording how far it got."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        for step in range(3):
            await self.release.wait()
            await asyncio.sleep(0)
            self.steps.append(step)
        return "done"


async def test_an_anyio_cancel_scope_does_not_cut_the_clean_up_short() -> None:
    clean_up = _CleanUp()
    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            try:
                await asyncio.Event().wait()
            finally:  # the scope cancels again at every await from here on
                await shielded(clean_up())

    task = asyncio.ensure_future(caller())
    await asyncio.sleep(0)
    scope.cancel()
    await _turns(20)  # enough loop turns for the cancels to be delivered, again and again
    assert clean_up.steps == [] and not task.done()  # still waiting for its clean-up
    clean_up.release.set()
    async with asyncio.timeout(BOUND_S):
        await task
    assert clean_up.steps == [0, 1, 2] and scope.cancelled_caught


async def test_asyncio_cancels_during_the_clean_up_wait_for_it_then_propagate() -> None:
    clean_up = _CleanUp()
    task = asyncio.ensure_future(shielded(clean_up()))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # twice: still waits
    await _turns(20)  # enough loop turns for the cancels to be delivered, again and again
    assert not task.done()
    clean_up.release.set()
    async with asyncio.timeout(BOUND_S):
        await asyncio.wait({task})
    assert task.cancelled() and clean_up.steps == [0, 1, 2]


async def test_without_a_cancel_it_returns_what_the_clean_up_returned() -> None:
    clean_up = _CleanUp()
    clean_up.release.set()
    assert await shielded(clean_up()) == "done"
