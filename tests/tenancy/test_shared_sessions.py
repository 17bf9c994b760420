"""Two replicas of `sandgate serve` sharing one Redis (`server.http_sessions: redis`,
`audit.sink: redis`, counters and approvals in Redis), over real streamable HTTP.

A session opened on one replica is served by the other for the same grant and is "not found"
for another grant; a DELETE through either ends it for both; a grant's session cap holds
across replicas while other grants still open theirs; an idle session ends; the calls of both
replicas are in one audit stream that `sandgate audit query` reads; an approval asked on one
replica and answered by the operator lets the identical call run on the other; a call is
cancelled by a `notifications/cancelled` sent to either replica, and by no one else's; a
DELETE through either cancels the session's calls on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import mcp_types as types
import pytest
import redis

from runner import main
from tests.batch.conftest import RayCluster, ray_cluster  # noqa: F401  (the fixture)
from tests.front_ends import bearer, grants_yaml, mcp_client, serving_on_ray, until
from tests.processes import serving_http
from tests.redis_server import RedisServer, redis_server
from tests.tenancy._server import (
    CALL_TIMEOUT_S,
    RawSession,
    initialize_message,
    mcp_headers,
    result_text,
    sse_messages,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.wasm]

GRANTS = ("g1", "g2", "g3", "g4", "g5", "g6", "g7")
MAX_SESSIONS = 2
IDLE_S = 4.0
SESSION_KEY = "sandgate:http-session:id:"
SPIN = "while True:\n    pass"
CANCELLED_WITHIN_S = 10.0
"""Bound of a cancelled call's end, and of the next call's on the freed worker: a third of the
policy's 30 s run timeout, which a call nobody stopped would run to."""


def shared_policy(redis_url: str) -> str:
    return (
        "version: '1'\ndefault: deny\n"
        f"{grants_yaml(GRANTS)}"
        "all_tools: {engine: wasm}\n"
        "quotas: {timeout_s: 30, memory_mb: 256}\n"
        "tools:\n"
        "  run_code: {}\n"
        "  run_python_code: {action: require_approval, reason: every run is reviewed}\n"
        "approvals: {by: operator}\n"
        f"state: {{backend: redis, url: '{redis_url}'}}\n"
        "audit: {sink: redis}\n"
        f"server: {{http_sessions: redis, max_sessions_per_grant: {MAX_SESSIONS}, "
        f"session_idle_s: {IDLE_S}}}\n"
    )


@dataclass
class Replicas:
    """Two replicas' MCP URLs, their shared policy file and Redis."""

    a: str
    b: str
    policy: Path
    redis: RedisServer

    def headers(self, grant: str) -> dict[str, str]:
        return bearer(grant)

    @asynccontextmanager
    async def session(self, url: str, grant: str) -> AsyncIterator[RawSession]:
        """A raw session of `grant` opened on the replica at `url`, deleted at the end (if
        the test has not ended it)."""
        async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
            opened = RawSession(http, url, self.headers(grant))
            await opened.initialize()
            try:
                yield opened
            finally:
                assert await opened.delete() in (200, 404)

    def on(self, session: RawSession, url: str) -> RawSession:
        """The same session, its requests sent to the replica at `url`."""
        return RawSession(session.http, url, session.headers, session.session_id)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    with ExitStack() as stack:
        server = stack.enter_context(redis_server(tmp_path_factory.mktemp("redis")))
        policy = root / "policy.yaml"
        policy.write_text(shared_policy(server.url))
        a, _ = stack.enter_context(serving_http(policy, root / "a", workers=1))
        b, _ = stack.enter_context(serving_http(policy, root / "b", workers=1))
        yield Replicas(a, b, policy, server)


async def test_a_session_opened_on_one_replica_is_served_by_the_other(
    replicas: Replicas,
) -> None:
    async with replicas.session(replicas.a, "g1") as on_a:
        on_b = replicas.on(on_a, replicas.b)
        status, message = await on_b.request("tools/list")
        assert status == 200 and message is not None
        assert {t["name"] for t in message["result"]["tools"]} >= {"run_code"}
        intruder = mcp_headers(replicas.headers("g2"), on_a.session_id)
        for url in (replicas.a, replicas.b):  # another grant's id is not found anywhere
            response = await on_a.http.post(url, headers=intruder, json=_list(7))
            assert response.status_code == 404
        unknown = mcp_headers(replicas.headers("g1"), "0" * 32)
        response = await on_a.http.post(replicas.b, headers=unknown, json=_list(8))
        assert response.status_code == 404
        assert (await on_b.request("tools/list"))[0] == 200  # still the owner's


async def test_a_delete_through_one_replica_ends_the_session_on_both(replicas: Replicas) -> None:
    async with replicas.session(replicas.a, "g2") as on_a:
        on_b = replicas.on(on_a, replicas.b)
        assert await on_b.delete(headers=mcp_headers(replicas.headers("g1"))) == 404
        assert (await on_a.request("tools/list"))[0] == 200  # another grant's DELETE: no effect
        assert await on_b.delete() == 200
        assert (await on_a.request("tools/list"))[0] == 404
        assert (await on_b.request("tools/list"))[0] == 404
        assert await on_a.delete() == 404


async def test_a_grants_session_cap_holds_across_replicas(replicas: Replicas) -> None:
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(replicas.session(replicas.a, "g3"))
        await stack.enter_async_context(replicas.session(replicas.b, "g3"))
        for url in (replicas.a, replicas.b):
            response = await first.http.post(
                url, headers=mcp_headers(replicas.headers("g3")), json=initialize_message("x")
            )
            assert response.status_code == 429, response.text
            assert "server.max_sessions_per_grant" in response.text
        other = await stack.enter_async_context(replicas.session(replicas.b, "g4"))
        assert other.session_id is not None  # another grant still opens its own
        assert await replicas.on(first, replicas.b).delete() == 200
        again = await stack.enter_async_context(replicas.session(replicas.a, "g3"))
        assert again.session_id not in (None, first.session_id)


async def test_the_server_initiated_stream_is_refused_with_405(replicas: Replicas) -> None:
    async with replicas.session(replicas.a, "g5") as on_a:
        headers = {**mcp_headers(replicas.headers("g5"), on_a.session_id)}
        headers["Accept"] = "text/event-stream"
        response = await on_a.http.get(replicas.b, headers=headers)
        assert response.status_code == 405
        assert "POST" in response.headers["allow"]


async def test_an_idle_session_ends(replicas: Replicas) -> None:
    client = redis.Redis.from_url(replicas.redis.url)
    try:
        async with replicas.session(replicas.a, "g5") as on_a:
            key = SESSION_KEY + str(on_a.session_id)
            assert 0 < int(client.pttl(key)) <= IDLE_S * 1000  # type: ignore[arg-type]
            deadline = time.monotonic() + IDLE_S * 3
            while client.exists(key):  # nothing uses it: it expires after IDLE_S
                assert time.monotonic() < deadline, "the idle session did not end"
                time.sleep(0.1)
            assert (await on_a.request("tools/list"))[0] == 404
            assert (await replicas.on(on_a, replicas.b).request("tools/list"))[0] == 404
    finally:
        client.close()


async def test_a_call_longer_than_the_idle_time_keeps_its_session_on_every_replica(
    replicas: Replicas,
) -> None:
    client = redis.Redis.from_url(replicas.redis.url)
    try:
        async with replicas.session(replicas.a, "g1") as on_a, asyncio.TaskGroup() as tasks:
            key = SESSION_KEY + str(on_a.session_id)
            began = time.monotonic()
            code = f"import time\ntime.sleep({IDLE_S * 1.6})\nprint('done')"
            call = tasks.create_task(on_a.call_tool("run_code", {"code": code}))
            while time.monotonic() - began < IDLE_S * 1.3:  # past the idle time, mid-call
                assert not call.done(), "the call ended before it outlasted the idle time"
                assert client.exists(key), "the session idled out while its call ran"
                await asyncio.sleep(0.1)
            on_b = replicas.on(on_a, replicas.b)  # another replica, the same session
            assert (await on_b.request("tools/list"))[0] == 200
            status, message = await call
            assert status == 200 and message is not None
            assert message["result"]["structuredContent"]["stdout"] == "done\n"
            assert time.monotonic() - began > IDLE_S  # it did outlast the idle time
            assert 0 < int(client.pttl(key)) <= IDLE_S * 1000  # type: ignore[arg-type]
    finally:
        client.close()


async def test_both_replicas_calls_are_in_one_audit_stream(replicas: Replicas) -> None:
    sessions = []
    for url, word in ((replicas.a, "from-a"), (replicas.b, "from-b")):
        async with replicas.session(url, "g6") as opened:
            status, message = await opened.call_tool("run_code", {"code": f"print('{word}')"})
            assert status == 200 and message is not None
            assert message["result"]["structuredContent"]["stdout"] == f"{word}\n"
            sessions.append(f"http:{opened.session_id}")
    printed = _audit_query("--policy", str(replicas.policy), "--grant", "g6")
    found = [(r["event"], r.get("status"), r["session"]) for r in printed]
    assert found == [
        ("decision", None, sessions[0]),
        ("outcome", "ok", sessions[0]),
        ("decision", None, sessions[1]),
        ("outcome", "ok", sessions[1]),
    ]


async def test_an_approval_asked_on_one_replica_is_used_on_the_other(replicas: Replicas) -> None:
    code = "print('reviewed')"
    async with replicas.session(replicas.a, "g7") as on_a:
        status, message = await on_a.call_tool("run_python_code", {"code": code})
        assert status == 200 and message is not None and message["result"]["isError"]
        asked = _audit_query("--policy", str(replicas.policy), "--grant", "g7")
        (approval_id,) = [r["approval_id"] for r in asked if r["decision"] == "needs_approval"]
        assert main(["approve", approval_id, "--policy", str(replicas.policy)]) == 0
        on_b = replicas.on(on_a, replicas.b)
        status, message = await on_b.call_tool("run_python_code", {"code": code})
        assert status == 200 and "reviewed" in result_text(message)
    answered = _audit_query("--policy", str(replicas.policy), "--grant", "g7")
    assert [r["event"] for r in answered] == ["decision", "approval", "decision", "outcome"]
    assert answered[1]["by"].startswith("operator:")


async def test_the_sdk_client_works_against_a_replica(replicas: Replicas) -> None:
    async with mcp_client(replicas.b, "g4") as client:
        result = await client.call_tool("run_code", {"code": "print(6 * 7)"})
        assert isinstance(result, types.CallToolResult) and not result.is_error, result
        assert result.structured_content is not None
        assert result.structured_content["stdout"] == "42\n"


def _list(rid: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/list"}


def _audit_query(*argv: str) -> list[dict[str, Any]]:
    """What `sandgate audit query ARGV` prints, one record a line."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["audit", "query", *argv]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


# ---- cancellation: `notifications/cancelled` reaches the call on whichever replica it runs ----


def _call(rid: int, code: str) -> dict[str, Any]:
    params = {"name": "run_code", "arguments": {"code": code}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def _cancel(rid: int) -> dict[str, Any]:
    params = {"requestId": rid, "reason": "the user gave up"}
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}


async def _post(session: RawSession, body: dict[str, Any]) -> httpx.Response:
    return await session.http.post(
        session.url, headers=mcp_headers(session.headers, session.session_id), json=body
    )


def _start(session: RawSession, rid: int, code: str) -> asyncio.Task[httpx.Response]:
    return asyncio.ensure_future(_post(session, _call(rid, code)))


def _audited(replicas: Replicas, grant: str, session: RawSession) -> list[tuple[str, Any]]:
    """The audit of `session`: (event, outcome status), in order."""
    records = _audit_query("--policy", str(replicas.policy), "--grant", grant)
    return [
        (r["event"], r.get("status"))
        for r in records
        if r.get("session") == f"http:{session.session_id}"
    ]


async def _running(replicas: Replicas, grant: str, session: RawSession, calls: int = 1) -> None:
    """Return once `calls` calls of `session` have been allowed (the last one now runs)."""
    await until(
        "the call allowed",
        lambda: _audited(replicas, grant, session).count(("decision", None)) >= calls,
    )


@pytest.mark.parametrize("cancel_on", ["the other replica", "the same replica"])
async def test_a_call_is_cancelled_by_a_notification_to_either_replica(
    replicas: Replicas, cancel_on: str
) -> None:
    grant = "g1" if cancel_on == "the other replica" else "g2"
    async with replicas.session(replicas.a, grant) as on_a:
        spinning = _start(on_a, 5, SPIN)
        await _running(replicas, grant, on_a)
        via = replicas.on(on_a, replicas.b if cancel_on == "the other replica" else replicas.a)
        began = time.monotonic()
        assert (await _post(via, _cancel(5))).status_code == 202
        async with asyncio.timeout(CANCELLED_WITHIN_S):
            ended = await spinning
        stopped_s = time.monotonic() - began
        assert ended.status_code == 200
        assert [m for m in sse_messages(ended) if m.get("id") == 5] == []  # no answer (MCP)
        await until(
            "the cancelled call audited",
            lambda: ("outcome", "cancelled") in _audited(replicas, grant, on_a),
        )
        async with asyncio.timeout(CANCELLED_WITHIN_S):  # replica A's one worker is free again
            status, message = await on_a.call_tool("run_code", {"code": "print(6 * 7)"})
        assert status == 200 and message is not None
        assert message["result"]["structuredContent"]["stdout"] == "42\n"
    print(f"cancel via {cancel_on}: the call ended {stopped_s:.3f} s after the cancel was sent")


async def test_a_cancel_for_another_session_or_grant_changes_nothing(replicas: Replicas) -> None:
    async with (
        replicas.session(replicas.a, "g3") as victim,
        replicas.session(replicas.b, "g3") as sibling,
        replicas.session(replicas.b, "g4") as stranger,
    ):
        spinning = _start(victim, 5, SPIN)
        await _running(replicas, "g3", victim)
        intruder = RawSession(victim.http, replicas.b, replicas.headers("g4"), victim.session_id)
        assert (await _post(intruder, _cancel(5))).status_code == 404  # g3's session, to g4
        assert (await _post(sibling, _cancel(5))).status_code == 202  # g3, another session
        assert (await _post(stranger, _cancel(5))).status_code == 202  # g4's own session
        # A call queued behind the spinning one on A, cancelled the same way after those:
        # once it has ended, replica A has heard every cancel before it (one channel, in order).
        queued = _start(replicas.on(stranger, replicas.a), 9, "print('queued')")
        await _running(replicas, "g4", stranger)
        assert (await _post(stranger, _cancel(9))).status_code == 202
        async with asyncio.timeout(CANCELLED_WITHIN_S):
            assert [m for m in sse_messages(await queued) if m.get("id") == 9] == []
        assert not spinning.done(), "a cancel of another session or grant ended the call"
        assert ("outcome", "cancelled") not in _audited(replicas, "g3", victim)
        assert (await _post(replicas.on(victim, replicas.b), _cancel(5))).status_code == 202
        async with asyncio.timeout(CANCELLED_WITHIN_S):
            assert [m for m in sse_messages(await spinning) if m.get("id") == 5] == []


async def test_a_delete_cancels_the_sessions_calls_on_every_replica(replicas: Replicas) -> None:
    async with replicas.session(replicas.a, "g6") as on_a:
        on_b = replicas.on(on_a, replicas.b)
        spinning = [_start(on_a, 5, SPIN), _start(on_b, 6, SPIN)]
        await _running(replicas, "g6", on_a, calls=2)
        began = time.monotonic()
        assert await on_b.delete() == 200
        async with asyncio.timeout(CANCELLED_WITHIN_S):
            ended = await asyncio.gather(*spinning)
        stopped_s = time.monotonic() - began
        for response, rid in zip(ended, (5, 6), strict=True):
            assert [m for m in sse_messages(response) if m.get("id") == rid] == []
        await until(
            "both calls audited cancelled",
            lambda: _audited(replicas, "g6", on_a).count(("outcome", "cancelled")) == 2,
        )
        assert (await on_a.request("tools/list"))[0] == 404
    async with replicas.session(replicas.a, "g6") as again:  # replica A's worker is free
        async with asyncio.timeout(CANCELLED_WITHIN_S):
            status, message = await again.call_tool("run_code", {"code": "print(6 * 7)"})
        assert status == 200 and message is not None
        assert message["result"]["structuredContent"]["stdout"] == "42\n"
    print(f"DELETE via replica B: both calls ended {stopped_s:.3f} s after it was sent")


async def test_a_call_whose_cancel_came_first_is_not_run(replicas: Replicas) -> None:
    async with replicas.session(replicas.a, "g5") as on_a:
        on_b = replicas.on(on_a, replicas.b)
        assert (await _post(on_b, _cancel(5))).status_code == 202
        late = await _post(on_a, _call(5, "open('ran.txt', 'w').write('1')"))
        assert late.status_code == 200
        assert [m for m in sse_messages(late) if m.get("id") == 5] == []
        assert _audited(replicas, "g5", on_a) == []  # not even decided
        status, message = await on_b.call_tool(
            "run_code", {"code": "import os\nprint(os.listdir())"}
        )
        assert status == 200 and message is not None
        assert message["result"]["structuredContent"]["stdout"] == "[]\n"


async def test_a_cancel_while_redis_is_down_stops_only_its_own_replicas_call(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Redis down: a cancel still ends the call on the replica it reached (logged, not
    carried further), and once Redis is back the replicas hear each other's cancels again."""
    root = tmp_path_factory.mktemp("redis-down")
    with ExitStack() as stack:
        server = stack.enter_context(redis_server(tmp_path_factory.mktemp("redis")))
        policy = root / "policy.yaml"
        policy.write_text(
            shared_policy(server.url).replace(f"session_idle_s: {IDLE_S}", "session_idle_s: 120")
        )
        a, _ = stack.enter_context(serving_http(policy, root / "a", workers=1))
        b, _ = stack.enter_context(serving_http(policy, root / "b", workers=1))
        down = Replicas(a, b, policy, server)
        client = redis.Redis.from_url(server.url)
        stack.callback(client.close)
        async with down.session(a, "g1") as on_a:
            spinning = _start(on_a, 5, SPIN)
            await _running(down, "g1", on_a)
            server.stop()
            assert (await _post(on_a, _cancel(5))).status_code == 202
            async with asyncio.timeout(CANCELLED_WITHIN_S):
                assert [m for m in sse_messages(await spinning) if m.get("id") == 5] == []
            server.start()
            channel = "sandgate:http-session:cancels"
            await until(
                "both replicas listening again",
                lambda: dict(client.pubsub_numsub(channel)).get(channel.encode()) == 2,  # type: ignore[arg-type]
            )
            spinning = _start(on_a, 6, SPIN)
            await _running(down, "g1", on_a, calls=2)
            assert (await _post(down.on(on_a, b), _cancel(6))).status_code == 202
            async with asyncio.timeout(CANCELLED_WITHIN_S):
                assert [m for m in sse_messages(await spinning) if m.get("id") == 6] == []


@pytest.mark.ray
async def test_a_call_on_a_ray_front_end_is_cancelled_through_the_other(
    ray_cluster: RayCluster,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The same with two `sandgate serve --ray` front ends: the run on its Ray node stops."""
    root = tmp_path_factory.mktemp("ray-front-ends")
    with ExitStack() as stack:
        server = stack.enter_context(redis_server(tmp_path_factory.mktemp("redis")))
        policy = root / "policy.yaml"
        policy.write_text(shared_policy(server.url))
        urls = []
        for name in ("a", "b"):
            url, _ = stack.enter_context(serving_on_ray(policy, root / name, ray_cluster))
            urls.append(url)
        front_ends = Replicas(urls[0], urls[1], policy, server)
        async with front_ends.session(front_ends.a, "g1") as on_a:
            spinning = _start(on_a, 5, SPIN)
            await _running(front_ends, "g1", on_a)
            began = time.monotonic()
            assert (await _post(front_ends.on(on_a, front_ends.b), _cancel(5))).status_code == 202
            async with asyncio.timeout(CANCELLED_WITHIN_S):
                ended = await spinning
            stopped_s = time.monotonic() - began
            assert [m for m in sse_messages(ended) if m.get("id") == 5] == []
            await until(
                "the cancelled call audited",
                lambda: ("outcome", "cancelled") in _audited(front_ends, "g1", on_a),
            )
            async with asyncio.timeout(CANCELLED_WITHIN_S):  # its node's worker is free again
                status, message = await on_a.call_tool("run_code", {"code": "print(6 * 7)"})
            assert status == 200 and message is not None
            assert message["result"]["structuredContent"]["stdout"] == "42\n"
    print(f"cancel via the other Ray front end: the call ended {stopped_s:.3f} s after the cancel")
