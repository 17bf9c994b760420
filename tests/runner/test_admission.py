"""Fair admission: bounded waiting, `Busy` when full, waiting grants served in turn."""

from __future__ import annotations

import asyncio

import pytest

from runner._admission import Admission, Busy

pytestmark = pytest.mark.anyio


async def test_one_flooding_grant_does_not_starve_another() -> None:
    admission = Admission(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def run(grant: str, hold: asyncio.Event | None = None) -> None:
        async with admission.slot(grant):
            order.append(grant)
            if hold is not None:
                await hold.wait()

    first = asyncio.ensure_future(run("flood", gate))
    await asyncio.sleep(0)
    flood = [asyncio.ensure_future(run("flood")) for _ in range(5)]
    await asyncio.sleep(0)
    polite = asyncio.ensure_future(run("polite"))
    await asyncio.sleep(0)
    assert admission.waiting == 6
    gate.set()
    await asyncio.gather(first, *flood, polite)
    assert order.index("polite") <= 2, order


async def test_a_full_waiting_room_answers_busy() -> None:
    admission = Admission(1, max_waiting=2, max_waiting_per_grant=2)
    hold = asyncio.Event()

    async def run(grant: str) -> None:
        async with admission.slot(grant):
            await hold.wait()

    tasks = [asyncio.ensure_future(run("a")) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(Busy) as raised:
        await run("b")
    assert raised.value.retry_after_s > 0
    hold.set()
    await asyncio.gather(*tasks)


async def test_one_grant_is_capped_before_the_room_is_full() -> None:
    admission = Admission(1, max_waiting=10, max_waiting_per_grant=1)
    hold = asyncio.Event()

    async def run(grant: str) -> None:
        async with admission.slot(grant):
            await hold.wait()

    tasks = [asyncio.ensure_future(run("a")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Busy):
        await run("a")
    other = asyncio.ensure_future(run("b"))
    await asyncio.sleep(0)
    assert admission.waiting == 2
    hold.set()
    await asyncio.gather(*tasks, other)


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    admission = Admission(1)
    hold = asyncio.Event()
    ran: list[str] = []

    async def run(grant: str) -> None:
        async with admission.slot(grant):
            ran.append(grant)
            await hold.wait()

    holder = asyncio.ensure_future(run("a"))
    await asyncio.sleep(0)
    cancelled = asyncio.ensure_future(run("b"))
    waiting = asyncio.ensure_future(run("c"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    hold.set()
    await asyncio.gather(holder, waiting)
    assert ran == ["a", "c"] and admission.waiting == 0
