"""The state store fails: SQLite locked by another process, its file removed (and restored),
Redis on a closed port, Redis killed and restarted. The affected call is denied with rule
`/state` and a clear reason, nothing is counted, and the next call (once the store is back)
works."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import cast

import pytest

from sandboxes import WasmEngine
from tests.processes import free_port
from tests.redis_server import redis_server
from tests.results import text_of

from .conftest import Stack, stack, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.wasm, pytest.mark.slow]


def _denied_by_state(stack: Stack, result: object, before: int) -> dict[str, object]:
    """The call was denied by `/state` with a clear reason, and audited as such."""
    from mcp_types import CallToolResult

    assert isinstance(result, CallToolResult) and result.is_error
    payload = result.structured_content or {}
    assert (payload.get("status"), payload.get("rule")) == ("denied", "/state"), payload
    assert "state store is unreachable" in str(payload.get("reason"))
    (record,) = stack.records()[before:]
    assert (record["decision"], record["rule"]) == ("deny", "/state")
    return record


async def test_a_locked_sqlite_store_denies_only_while_locked(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    async with stack(tmp_path, _policy(), {"wasm": wasm_engine}) as live:
        assert not (await live.run("print(1)")).is_error
        before = len(live.records())
        holder = sqlite3.connect(live.db_path, timeout=0, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            began = time.monotonic()
            locked = await live.run("print(2)")
            waited = time.monotonic() - began
        finally:
            holder.close()  # releases the lock (the transaction is rolled back)
        record = _denied_by_state(live, locked, before)
        assert "locked" in str(record["reason"])
        assert waited < 30  # the store's busy timeout bounds the wait, not the lock holder
        assert not (await live.run("print(3)")).is_error
        assert live.units() == 2  # the denied call counted nothing


async def test_a_removed_sqlite_file_denies_until_it_is_restored(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    async with stack(tmp_path, _policy(max_runs=3), {"wasm": wasm_engine}) as live:
        assert not (await live.run("print(1)")).is_error
        backup = tmp_path / "backup.sqlite3"
        with sqlite3.connect(live.db_path) as source, sqlite3.connect(backup) as copy:
            source.backup(copy)
        live.db_path.unlink()
        before = len(live.records())
        gone = await live.run("print(2)")
        record = _denied_by_state(live, gone, before)
        assert "removed" in str(record["reason"])
        assert not live.db_path.exists()  # not silently recreated with empty counters
        shutil.copy(backup, tmp_path / "restoring")
        os.replace(tmp_path / "restoring", live.db_path)
        assert not (await live.run("print(3)")).is_error
        assert not (await live.run("print(4)")).is_error
        over = await live.run("print(5)")
        assert over.is_error and "/tools/run_code/limits/runs" in text_of(over)
        assert live.units() == 3  # restored 1, then 2 more; the denied call counted nothing


# -- Redis ---------------------------------------------------------------------------------------


def _redis_units(port: int) -> int:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        return int(cast(int, client.zcard("sandgate:c:runs|grant=local")))
    finally:
        client.close()


@pytest.mark.redis
async def test_redis_on_a_closed_port_denies_until_it_listens(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    port = free_port()
    state = f"state: {{backend: redis, url: 'redis://127.0.0.1:{port}/0'}}\n"
    with redis_server(tmp_path / "redis", port=port, started=False) as server:
        async with stack(tmp_path, _policy(extra=state), {"wasm": wasm_engine}) as live:
            before = len(live.records())
            refused = await live.run("print(1)")
            record = _denied_by_state(live, refused, before)
            assert f"127.0.0.1:{port}" in str(record["reason"])
            server.start()
            assert not (await live.run("print(2)")).is_error
            assert _redis_units(port) == 1


@pytest.mark.redis
async def test_redis_killed_mid_life_denies_until_it_is_back(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    port = free_port()
    state = f"state: {{backend: redis, url: 'redis://127.0.0.1:{port}/0'}}\n"
    policy = _policy(max_runs=2, extra=state)
    with redis_server(tmp_path / "redis", port=port) as server:
        async with stack(tmp_path, policy, {"wasm": wasm_engine}) as live:
            assert not (await live.run("print(1)")).is_error
            server.kill()
            before = len(live.records())
            down = await live.run("print(2)")
            _denied_by_state(live, down, before)
            server.start()  # the append-only file brings the count back
            await wait_until(lambda: _redis_units(port) == 1, "redis to reload its count")
            assert not (await live.run("print(3)")).is_error
            over = await live.run("print(4)")
            assert over.is_error and "/tools/run_code/limits/runs" in text_of(over)
            assert _redis_units(port) == 2  # the call made while Redis was down counted nothing


def _policy(*, max_runs: int = 10, extra: str = "") -> str:
    from .conftest import fault_policy

    return fault_policy(engine="wasm", max_runs=max_runs, extra=extra)
