"""The Redis session table: an entry lives as long as its session (kept alive by use, gone
when the session ends or idles out) and the per-node counts placement reads follow it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from runner.cluster._routes import SessionTable
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
