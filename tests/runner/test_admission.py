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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _hold(admission: Admission, grant: str, hold: asyncio.Event, ran: list[str]) -> None:
    async with admission.slot(grant, 0.5):
        ran.append(grant)
        await hold.wait()


async def test_a_lone_grant_may_use_every_slot() -> None:
    admission = Admission(3, clock=Clock())
    hold, ran = asyncio.Event(), []
    tasks = [asyncio.ensure_future(_hold(admission, "flood", hold, ran)) for _ in range(3)]
    await asyncio.sleep(0)
    assert admission.running("flood") == 3 and admission.waiting == 0
    hold.set()
    await asyncio.gather(*tasks)


async def test_the_last_slot_is_kept_for_another_active_grant() -> None:
    clock = Clock()
    admission = Admission(3, clock=clock)
    hold, ran = asyncio.Event(), []
    quiet_done = asyncio.Event()

    async def quiet_call() -> None:
        async with admission.slot("quiet", 0.5):
            ran.append("quiet")
        quiet_done.set()

    await quiet_call()  # the quiet grant was active a moment ago
    flood = [asyncio.ensure_future(_hold(admission, "flood", hold, ran)) for _ in range(4)]
    await asyncio.sleep(0)
    assert admission.running("flood") == 2 and admission.waiting == 2
    await quiet_call()  # starts at once on the slot kept free
    assert ran.count("quiet") == 2 and admission.running("flood") == 2
    clock.now += 5  # the quiet grant went quiet: the flood may take every slot again
    admission._dispatch()
    assert admission.running("flood") == 3 and admission.waiting == 1
    hold.set()
    await asyncio.gather(*flood)
    assert admission.waiting == 0 and admission.running("flood") == 0


async def test_a_freed_slot_goes_to_a_grant_under_its_share_first() -> None:
    admission = Admission(2, clock=Clock())
    hold, ran = asyncio.Event(), []
    first = [asyncio.ensure_future(_hold(admission, "a", hold, ran)) for _ in range(2)]
    await asyncio.sleep(0)
    more_a = asyncio.ensure_future(_hold(admission, "a", hold, ran))
    await asyncio.sleep(0)
    b = asyncio.ensure_future(_hold(admission, "b", hold, ran))
    await asyncio.sleep(0)
    assert admission.waiting == 2
    hold.set()
    await asyncio.gather(*first, more_a, b)
    assert ran.index("b") < ran.index("a", 2), ran
