"""Fixtures for the policy gate: a fake clock, gates over temp state, and a real redis-server
(`redis_url`, from `tests.redis_server`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policies import (
    AuditLog,
    CounterStore,
    Gate,
    RedisAuditSink,
    RedisCounterStore,
    SqliteCounterStore,
    load_policy_text,
)
from tests.clock import FakeClock
from tests.redis_server import redis_url  # noqa: F401  (the fixture)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteCounterStore]:
    store = SqliteCounterStore(tmp_path / "state.sqlite3")
    yield store
    store.close()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.jsonl")
    yield log
    log.close()


GateFactory = Callable[[str], Gate]


@pytest.fixture
def make_gate(sqlite_store: SqliteCounterStore, audit: AuditLog, clock: FakeClock) -> GateFactory:
    """`make_gate(policy_yaml)`: a gate over the test's SQLite store, audit file and clock."""

    def make(text: str) -> Gate:
        return Gate(load_policy_text(text), sqlite_store, audit, clock=clock)

    return make


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisCounterStore]:  # noqa: F811
    """A Redis store with its own key prefix, so tests never see each other's counters."""
    store = RedisCounterStore(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield store
    store.close()


@pytest.fixture
def redis_audit(redis_url: str) -> Iterator[RedisAuditSink]:  # noqa: F811
    """An audit stream on the real redis-server, its own for the test."""
    sink = RedisAuditSink(redis_url, stream=f"test-audit-{uuid.uuid4().hex[:8]}")
    yield sink
    sink.close()


@pytest.fixture
def redis_gates(
    redis_store: RedisCounterStore,
    redis_audit: RedisAuditSink,
    sqlite_store: SqliteCounterStore,
    audit: AuditLog,
    clock: FakeClock,
) -> Callable[[str], list[Gate]]:
    """`redis_gates(policy_yaml)`: a gate with Redis state (and the audit file), and one with
    SQLite state and a Redis audit stream: each waits on the network to decide and settle."""

    def make(text: str) -> list[Gate]:
        policy = load_policy_text(text)
        return [
            Gate(policy, redis_store, audit, clock=clock),
            Gate(policy, sqlite_store, redis_audit, clock=clock),
        ]

    return make


@pytest.fixture
def fsynced_audit(tmp_path: Path) -> Iterator[AuditLog]:
    """An audit file that fsyncs every record."""
    log = AuditLog(tmp_path / "synced.jsonl", fsync=True)
    yield log
    log.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> CounterStore:
    """Each counter-store test runs against SQLite and against a real Redis."""
    name = "sqlite_store" if request.param == "sqlite" else "redis_store"
    found: CounterStore = request.getfixturevalue(name)
    return found
