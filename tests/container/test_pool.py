"""The warm pool's rules, with stand-in containers (no daemon needed)."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import cast

import pytest

from sandboxes.container._pool import Pool, PoolStats, Warm
from sandboxes.container._sandbox import Sandbox
from sandboxes.container._spec import Shape

pytestmark = [pytest.mark.anyio, pytest.mark.container]

SMALL = Shape(256 << 20, 64, 10**9)
LARGE = Shape(512 << 20, 64, 10**9)
WAIT_S = 5.0


@dataclass
class StandIn:
    id: str
    ready_at: float = field(default_factory=time.monotonic)
    dead: bool = False

    def alive(self) -> bool:
        return not self.dead


@dataclass
class Factory:
    """Launches stand-ins; `gate` holds launches until set."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    launched: list[Shape] = field(default_factory=list)
    disposed: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def launch(self, shape: Shape) -> Warm:
        self.launched.append(shape)
        await self.gate.wait()
        return Warm(cast(Sandbox, StandIn(f"c{next(self._ids)}")), None, shape)

    async def dispose(self, warm: Warm) -> None:
        self.disposed.append(warm.sandbox.id)


async def test_fills_serves_warm_and_refills_only_when_asked() -> None:
    factory = Factory()
    factory.gate.set()
    pool = Pool(factory.launch, factory.dispose, size=2, idle_s=60)
    pool.fill(SMALL)
    assert await pool.wait_full(WAIT_S)
    warm = await pool.take(SMALL)
    assert warm is not None and pool.stats().idle == 1 and len(factory.launched) == 2
    pool.replenish()
    assert await pool.wait_full(WAIT_S)
    assert (len(factory.launched), pool.stats().warm_runs) == (3, 1)
    await pool.close()
    assert sorted(factory.disposed) == ["c1", "c2"]


async def test_another_shape_drops_idle_containers_and_runs_cold() -> None:
    factory = Factory()
    factory.gate.set()
    pool = Pool(factory.launch, factory.dispose, size=1, idle_s=60)
    pool.fill(SMALL)
    assert await pool.wait_full(WAIT_S)
    assert await pool.take(LARGE) is None
    assert pool.stats().cold_runs == 1
    pool.replenish()
    assert await pool.wait_full(WAIT_S)
    assert factory.launched == [SMALL, LARGE] and factory.disposed == ["c0"]
    await pool.close()


async def test_a_run_waits_for_a_starting_container_rather_than_starting_its_own() -> None:
    factory = Factory()
    pool = Pool(factory.launch, factory.dispose, size=1, idle_s=60)
    pool.fill(SMALL)
    taking = asyncio.ensure_future(pool.take(SMALL))
    await asyncio.sleep(0)
    assert not taking.done()
    factory.gate.set()
    async with asyncio.timeout(WAIT_S):
        warm = await taking
    assert warm is not None and pool.stats().cold_runs == 0
    await pool.close()


async def test_stale_idle_containers_are_dropped() -> None:
    factory = Factory()
    factory.gate.set()
    pool = Pool(factory.launch, factory.dispose, size=1, idle_s=0.5)
    pool.fill(SMALL)
    assert await pool.wait_full(WAIT_S)
    stand_in = cast(StandIn, pool._idle[0].sandbox)
    stand_in.ready_at -= 10
    assert await pool.take(SMALL) is None
    async with asyncio.timeout(WAIT_S):
        while factory.disposed != ["c0"]:
            await asyncio.sleep(0)
    await pool.close()


async def test_a_container_that_died_while_idle_is_replaced_not_handed_out() -> None:
    factory = Factory()
    factory.gate.set()
    pool = Pool(factory.launch, factory.dispose, size=1, idle_s=60)
    pool.fill(SMALL)
    assert await pool.wait_full(WAIT_S)
    cast(StandIn, pool._idle[0].sandbox).dead = True
    async with asyncio.timeout(WAIT_S):
        warm = await pool.take(SMALL)
    assert warm is not None and warm.sandbox.id == "c1"
    assert factory.disposed == ["c0"] and pool.stats().warm_runs == 1
    await pool.close()


async def test_a_run_moved_off_its_pool_container_counts_cold_not_warm() -> None:
    factory = Factory()
    factory.gate.set()
    pool = Pool(factory.launch, factory.dispose, size=1, idle_s=60)
    pool.fill(SMALL)
    assert await pool.wait_full(WAIT_S)
    assert await pool.take(SMALL) is not None
    pool.moved_cold(was_warm=True, retried=True)
    assert pool.stats() == PoolStats(0, 0, 0, 1, 1)
    assert await pool.take(LARGE) is None
    pool.moved_cold(was_warm=False, retried=True)
    assert pool.stats() == PoolStats(0, 0, 0, 2, 2)
    await pool.close()


async def test_close_removes_containers_still_starting() -> None:
    factory = Factory()
    pool = Pool(factory.launch, factory.dispose, size=2, idle_s=60)
    pool.fill(SMALL)
    closing = asyncio.ensure_future(pool.close())
    await asyncio.sleep(0)
    factory.gate.set()
    async with asyncio.timeout(WAIT_S):
        await closing
    assert sorted(factory.disposed) == ["c0", "c1"]
