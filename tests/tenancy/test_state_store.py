"""A state store that is locked or hung delays only the calls that need it, over real
streamable HTTP.

While another process holds the SQLite write lock, one grant's call waits for its decision
(up to the store's busy timeout). Another grant's call that is already running still ends and
is answered (settling it, a commit, waits on no lock), and a third grant is still served: the
server's event loop never waits on the store (every engine). While Redis hangs, a call that
ends settles off the event loop (its commit and its audit record go to Redis), and another
grant is still served.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from tests.redis_server import redis_server
from tests.tenancy._server import engine_params, result_text, tenant_policy, tenant_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COUNTED = "  run_python_code: {limits: [{counter: runs, window: hour, max: 100, scope: grant}]}\n"
BUSY_1S = "import time\nend = time.time() + 1.0\nwhile time.time() < end:\n    pass\nprint('ran')"
SETTLED_WITHIN_S = 3.0
"""How long after the lock is taken the running call's answer may come: its run (1 s) and
the answer; the waiting decision holds the store for up to its busy timeout (5 s)."""


@pytest.mark.parametrize("engine", engine_params())
async def test_a_running_call_ends_and_others_are_served_while_the_store_is_locked(
    tmp_path: Path, engine: str
) -> None:
    policy = tenant_policy(engine, tools=COUNTED)
    with tenant_server(tmp_path, engine, policy=policy) as srv:
        async with srv.raw("alice") as alice, srv.raw("bob") as bob, srv.raw("carol") as carol:
            for raw in (alice, bob):  # each session's interpreter is up
                _, warm = await raw.call_tool("run_python_code", {"code": "print(0)"})
                assert result_text(warm).strip() == "0"
            running = asyncio.create_task(alice.call_tool("run_python_code", {"code": BUSY_1S}))
            await asyncio.sleep(0.4)  # decided (its counter reserved) and running
            holder = sqlite3.connect(srv.state_dir / "state.sqlite3", timeout=0)
            holder.isolation_level = None
            holder.execute("BEGIN EXCLUSIVE")  # another process's write lock
            try:
                locked_at = time.monotonic()
                waiting = asyncio.create_task(
                    bob.call_tool("run_python_code", {"code": "print(2)"})
                )
                await asyncio.sleep(0.2)  # Bob's decision waits on the lock
                await asyncio.wait({running}, timeout=SETTLED_WITHIN_S)
                answered_after = time.monotonic() - locked_at
                assert running.done(), f"Alice's call was not answered {answered_after:.1f} s in"
                listed_at = time.monotonic()
                status, listed = await asyncio.wait_for(carol.request("tools/list"), 5)
                listing_took = time.monotonic() - listed_at
                assert not waiting.done(), "Bob's call should wait for the store"
            finally:
                holder.close()  # Bob's decision goes on
            _, ran = running.result()
            assert result_text(ran).strip() == "ran", ran
            assert status == 200 and listed is not None and "result" in listed
            assert listing_took < 1.0, f"Carol waited {listing_took:.2f} s for the tool list"
            _, later = await asyncio.wait_for(waiting, 60)
            assert result_text(later).strip() == "2"  # decided once the lock was released
        runs = [r for r in srv.audit() if r.get("event") == "outcome"]
        assert {r["grant"] for r in runs} == {"alice", "bob"}
        assert all(r["outcome"] == "completed" for r in runs)


@pytest.mark.redis
@pytest.mark.parametrize("engine", engine_params("wasm"))
async def test_a_call_that_ends_while_redis_hangs_stalls_no_other_grant(
    tmp_path: Path, engine: str
) -> None:
    with redis_server(tmp_path / "redis") as redis:
        on_redis = f"state: {{backend: redis, url: '{redis.url}'}}\naudit: {{sink: redis}}\n"
        policy = tenant_policy(engine, tools=COUNTED, sections=on_redis)
        with tenant_server(tmp_path, engine, policy=policy) as srv:
            async with srv.raw("alice") as alice, srv.raw("carol") as carol:
                _, warm = await alice.call_tool("run_python_code", {"code": "print(0)"})
                assert result_text(warm).strip() == "0"
                running = asyncio.create_task(alice.call_tool("run_python_code", {"code": BUSY_1S}))
                await asyncio.sleep(0.4)  # decided (its counter reserved in Redis) and running
                with redis.hung():
                    await asyncio.wait({running}, timeout=1.5)  # its run ends; settling waits
                    listed_at = time.monotonic()
                    status, listed = await asyncio.wait_for(carol.request("tools/list"), 10)
                    listing_took = time.monotonic() - listed_at
                assert status == 200 and listed is not None and "result" in listed
                assert listing_took < 1.0, f"Carol waited {listing_took:.2f} s for the tool list"
                _, ran = await asyncio.wait_for(running, 60)
                assert result_text(ran).strip() == "ran", ran
