"""Fixtures for the policy gate: a fake clock, gates over temp state, and a real redis-server."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policies import (
    AuditLog,
    CounterStore,
    Gate,
    RedisCounterStore,
    SqliteCounterStore,
    load_policy_text,
)
from tests.clock import FakeClock
from tests.processes import stop

IN_CI = os.environ.get("CI") == "true"
REDIS_START_TIMEOUT_S = 20.0


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a unix socket (no port races), killed at teardown."""
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is required in CI; install the redis-server package")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    folder = tmp_path_factory.mktemp("redis")
    socket_path = folder / "redis.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--loglevel",
            "notice",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(process)
        yield f"unix://{socket_path}"
    finally:
        stop(process, timeout_s=10)
        if process.stdout is not None:
            process.stdout.close()


def _wait_ready(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"ready to accept connections" not in seen.lower():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                pytest.fail(f"redis-server did not start: {seen.decode(errors='replace')}")
            if selector.select(timeout=remaining):
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    process.wait(timeout=remaining)
                seen += chunk


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisCounterStore]:
    """A Redis store with its own key prefix, so tests never see each other's counters."""
    store = RedisCounterStore(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> CounterStore:
    """Each counter-store test runs against SQLite and against a real Redis."""
    name = "sqlite_store" if request.param == "sqlite" else "redis_store"
    found: CounterStore = request.getfixturevalue(name)
    return found
