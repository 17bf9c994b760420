"""The Redis session table: an entry lives as long as its session (kept alive by use, gone
when the session ends or idles out), the per-node counts placement reads follow it, and a
grant's sessions in the whole cluster stay within its cap."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from runner.cluster._routes import AtCap, SessionTable
from tests.redis_server import redis_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.redis

TTL_S = 600.0


class Clock:
    """Unix time the test moves (the deadlines placement counts by)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(redis_url: str, clock: Clock) -> Iterator[SessionTable]:  # noqa: F811
    made = SessionTable(redis_url, clock=clock)
    try:
        yield made
    finally:
        made.close()


def a_node() -> str:
    return f"node-{uuid.uuid4().hex[:8]}@actor"


@pytest.fixture
def alice() -> str:
    """A grant of this test's own (the Redis is shared)."""
    return f"alice-{uuid.uuid4().hex[:8]}"


def test_placed_sessions_count_until_they_idle_out(
    table: SessionTable, clock: Clock, alice: str
) -> None:
    node = a_node()
    for session in ("s1", "s2"):
        assert table.place(alice, session, node, ttl_s=TTL_S) == node
    table.place("bob", "s1", node, ttl_s=TTL_S)
    assert table.placed(node) == {alice: 2, "bob": 1}
    clock.now += TTL_S - 10
    assert table.use(alice, "s1", ttl_s=TTL_S) == node  # a call keeps s1 alive
    clock.now += 20
    assert table.placed(node) == {alice: 1}, "s2 and bob's idled out, s1 was used"


def test_an_ended_session_is_forgotten_once_and_never_counted_below_zero(
    table: SessionTable, alice: str
) -> None:
    node = a_node()
    table.place(alice, "s1", node, ttl_s=TTL_S)
    assert table.forget(alice, "s1") is True
    assert table.forget(alice, "s1") is False
    assert table.node_of(alice, "s1") is None
    assert table.placed(node) == {}
    table.place(alice, "s2", node, ttl_s=TTL_S)
    assert table.placed(node) == {alice: 1}


def test_a_session_moved_off_a_lost_node_counts_on_its_new_node_only(
    table: SessionTable, alice: str
) -> None:
    dead, first, second = a_node(), a_node(), a_node()
    table.place(alice, "s1", dead, ttl_s=TTL_S)
    assert table.move(alice, "s1", lost=dead, to=first, ttl_s=TTL_S) == (True, first)
    assert table.move(alice, "s1", lost=dead, to=second, ttl_s=TTL_S) == (False, first)
    assert (table.placed(dead), table.placed(first), table.placed(second)) == (
        {},
        {alice: 1},
        {},
    )


@pytest.mark.anyio
async def test_the_entry_itself_expires_with_its_session(table: SessionTable, alice: str) -> None:
    node = a_node()
    table.place(alice, "brief", node, ttl_s=0.2)
    assert table.node_of(alice, "brief") == node
    async with asyncio.timeout(10):
        while table.node_of(alice, "brief") is not None:
            await asyncio.sleep(0.05)
    assert table.use(alice, "brief", ttl_s=TTL_S) is None, "an expired entry is not revived"


def test_a_grant_holds_at_most_its_cap_of_sessions_across_every_node(
    table: SessionTable, alice: str
) -> None:
    first, second = a_node(), a_node()
    for session, node in (("s1", first), ("s2", second), ("s3", first)):
        assert table.place(alice, session, node, ttl_s=TTL_S, cap=3) == node
    with pytest.raises(AtCap) as refused:
        table.place(alice, "s4", second, ttl_s=TTL_S, cap=3)
    assert refused.value.held == 3
    assert table.node_of(alice, "s4") is None, "a refused session is not placed"
    assert table.placed(second) == {alice: 1}, "nor counted on its node"
    assert table.place(alice, "s2", first, ttl_s=TTL_S, cap=3) == second, "placed ones still are"
    bob = f"bob-{uuid.uuid4().hex[:8]}"
    assert table.place(bob, "s1", second, ttl_s=TTL_S, cap=3) == second
    assert table.held(alice) == 3
    table.forget(alice, "s1")
    assert table.held(alice) == 2
    assert table.place(alice, "s4", second, ttl_s=TTL_S, cap=3) == second


def test_idled_out_and_moved_sessions_count_once_against_the_cap(
    table: SessionTable, clock: Clock, alice: str
) -> None:
    dead, live = a_node(), a_node()
    table.place(alice, "kept", dead, ttl_s=TTL_S, cap=2)
    table.place(alice, "idle", live, ttl_s=TTL_S, cap=2)
    assert table.move(alice, "kept", lost=dead, to=live, ttl_s=TTL_S) == (True, live)
    assert table.held(alice) == 2, "a moved session is the same session"
    clock.now += TTL_S - 10
    table.use(alice, "kept", ttl_s=TTL_S)
    clock.now += 20
    assert table.held(alice) == 1, "the unused one idled out"
    assert table.place(alice, "new", live, ttl_s=TTL_S, cap=2) == live


def test_front_ends_placing_at_once_never_pass_the_cap_together(
    redis_url: str,  # noqa: F811
    alice: str,
) -> None:
    tables = [SessionTable(redis_url) for _ in range(2)]
    try:

        def place(i: int) -> bool:
            try:
                tables[i % 2].place(alice, f"s{i}", f"node-{i % 2}@a", ttl_s=TTL_S, cap=3)
            except AtCap:
                return False
            return True

        with ThreadPoolExecutor(max_workers=8) as pool:
            placed = list(pool.map(place, range(16)))
        assert placed.count(True) == 3
        assert tables[0].held(alice) == 3
    finally:
        for made in tables:
            made.close()
