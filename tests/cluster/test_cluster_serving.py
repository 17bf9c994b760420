"""`sandgate serve --ray`: two front ends over a real two-node Ray cluster and a real Redis.

Sessions are routed to the node holding them from either front end, grants stay apart across
nodes, counters are exact across front ends, a node lost mid-load loses its in-flight calls
(infra errors, counters rolled back, nothing run twice) and its sessions say so, and a front
end killed mid-call leaves its session to the other front end. A grant's session cap holds
across the whole cluster, not per node.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import httpx2 as httpx
import mcp_types as types
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from policies import AuditRecord, CounterSpec, RedisCounterStore, load_policy, open_audit_sink
from runner.cluster._inflight import PREFIX as INFLIGHT_PREFIX
from runner.cluster._routes import SessionTable
from tests.cluster.conftest import COUNTED_MAX, RUNS_MAX, SESSIONS_MAX, Deployment, text_of
from tests.front_ends import WAIT_S, bearer, mcp_client, until
from tests.tenancy._server import CALL_TIMEOUT_S, RawSession

pytestmark = [pytest.mark.anyio, pytest.mark.ray, pytest.mark.wasm, pytest.mark.redis]


def audit(deployment: Deployment) -> list[AuditRecord]:
    policy = load_policy(deployment.policy)
    sink = open_audit_sink(
        policy.audit,
        state_url=deployment.redis_url,
        default_path=deployment.policy.parent / "unused.jsonl",
        write=False,
    )
    try:
        return [entry.record for entry in sink.entries()]
    finally:
        sink.close()


def route_of(deployment: Deployment, grant: str, session: str) -> str | None:
    """The session table's entry for the session (`node@actor`), `None` when it has none."""
    table = SessionTable(deployment.redis_url)
    try:
        return table.node_of(grant, session)
    finally:
        table.close()


def node_of(deployment: Deployment, grant: str, session: str) -> str:
    """`head` or `second`: where the session table puts the session."""
    where = route_of(deployment, grant, session)
    assert where is not None, f"session {session!r} of {grant} was never placed"
    return deployment.node_names[where.split("@", 1)[0]]


async def run_code(deployment: Deployment, fe: int, grant: str, **arguments: Any) -> Any:
    async with deployment.front_ends[fe].client(grant) as client:
        return await client.call_tool("run_code", arguments)


async def test_a_session_keeps_its_state_whichever_front_end_serves_it(
    deployment: Deployment,
) -> None:
    sessions = [f"notes-{n}" for n in range(4)]
    for n, name in enumerate(sessions):
        code = f"open('note.txt', 'w').write('kept {n}')\nx = {n} * 10\nprint('ok')"
        first = await run_code(deployment, n % 2, "alice", session=name, code=code)
        assert not first.is_error, text_of(first)
    for n, name in enumerate(sessions):
        again = await run_code(
            deployment, (n + 1) % 2, "alice", session=name, code="print(open('note.txt').read(), x)"
        )
        assert not again.is_error, text_of(again)
        assert f"kept {n} {n * 10}" in text_of(again)
    placed = {node_of(deployment, "alice", f"named:{name}") for name in sessions}
    assert placed == {"head", "second"}, "a grant's sessions spread over both nodes"


async def test_an_mcp_session_opened_on_one_front_end_is_served_by_the_other(
    deployment: Deployment,
) -> None:
    one, other = deployment.front_ends
    headers = bearer("alice")
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        opened = RawSession(http, one.url, headers)
        sid = await opened.initialize()
        status, wrote = await opened.call_tool("run_code", {"code": "y = 7"})
        assert status == 200 and not wrote_error(wrote), wrote
        elsewhere = RawSession(http, other.url, headers, session_id=sid)
        status, read = await elsewhere.call_tool("run_code", {"code": "print(y * 6)"})
        assert status == 200 and "42" in json.dumps(read), read
        assert node_of(deployment, "alice", f"http:{sid}") in ("head", "second")
        assert await elsewhere.delete() == 200
        status, _gone = await opened.call_tool("run_code", {"code": "print(y)"})
        assert status == 404
    assert route_of(deployment, "alice", f"http:{sid}") is None, "an ended session is forgotten"


async def test_a_call_given_up_stops_its_run_on_the_node(deployment: Deployment) -> None:
    headers = bearer("carol")
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        session = RawSession(http, deployment.front_ends[1].url, headers)
        sid = await session.initialize()
        spinning = asyncio.create_task(session.call_tool("run_code", {"code": "while True: pass"}))
        await until("the call is in flight", lambda: f"http:{sid}" in inflight_sessions(deployment))
        spinning.cancel()  # the client hangs up: its HTTP request ends
        await until("the run is settled", lambda: not inflight_sessions(deployment), 30)
        began = time.monotonic()
        status, after = await session.call_tool("run_code", {"code": "print('after')"})
        assert status == 200 and "after" in json.dumps(after)
        assert time.monotonic() - began < 30, "the node's one worker was still spinning"
    outcomes = [r for r in audit(deployment) if r.session == f"http:{sid}" and r.event == "outcome"]
    assert [o.outcome for o in outcomes] == ["cancelled", "completed"]


def wrote_error(message: dict[str, Any] | None) -> bool:
    return message is None or "error" in message or bool(message["result"].get("isError"))


async def test_a_clients_human_approves_a_call_served_by_a_node(deployment: Deployment) -> None:
    asked: list[str] = []

    async def human(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True})

    url = deployment.front_ends[1].url
    async with mcp_client(url, "carol", elicitation_callback=human) as client:
        ran = await client.call_tool(
            "save_to_file_and_run", {"file_name": "a.py", "code": "print('approved')"}
        )
    assert not ran.is_error, text_of(ran)
    assert "approved" in text_of(ran)
    assert len(asked) == 1 and "every save is reviewed" in asked[0]


async def test_another_grant_cannot_reach_a_session_or_its_files(deployment: Deployment) -> None:
    secret = await run_code(
        deployment, 0, "bob", session="vault", code="open('secret.txt','w').write('s3cret')"
    )
    assert not secret.is_error, text_of(secret)
    for fe in (0, 1):
        probe = await run_code(
            deployment,
            fe,
            "carol",
            session="vault",
            code="import os\nprint(sorted(os.listdir('.')))\nprint(open('secret.txt').read())",
        )
        assert "s3cret" not in text_of(probe)
        assert "FileNotFoundError" in text_of(probe)
    async with deployment.front_ends[1].client("carol") as client:
        listed = await client.list_resources()
    assert not [r for r in listed.resources if "secret" in str(r.uri)]


async def test_counters_are_exact_across_two_front_ends(deployment: Deployment) -> None:
    async def one(n: int) -> Any:
        async with deployment.front_ends[n % 2].client("carol") as client:
            return await client.call_tool("run_python_code", {"code": "print(1)"})

    results = await asyncio.gather(*(one(n) for n in range(50)))
    allowed = [r for r in results if not r.is_error]
    assert len(allowed) == COUNTED_MAX, [text_of(r) for r in results[:3]]
    records = [
        r
        for r in audit(deployment)
        if r.tool == "run_python_code" and r.grant == "carol" and r.event == "decision"
    ]
    assert sum(r.decision == "allow" for r in records) == COUNTED_MAX
    assert sum(r.decision == "deny" for r in records) == 50 - COUNTED_MAX


async def test_a_snapshot_taken_on_one_node_restores_and_forks_on_the_other(
    deployment: Deployment,
) -> None:
    code = "open('kept.txt', 'w').write('from origin')\nv = 41"
    made = await run_code(deployment, 0, "alice", session="origin", code=code)
    assert not made.is_error, text_of(made)
    origin = node_of(deployment, "alice", "named:origin")
    async with deployment.front_ends[0].client("alice") as client:
        taken = await client.call_tool("snapshot_session", {"session": "origin"})
    assert not taken.is_error, text_of(taken)
    snapshot = taken.structured_content["snapshot"]["id"]
    others = []
    for n in range(4):  # placement spreads alice's new sessions: one lands on the other node
        await run_code(deployment, 1, "alice", session=f"other-{n}", code="print(0)")
        if node_of(deployment, "alice", f"named:other-{n}") != origin:
            others.append(f"other-{n}")
            break
    assert others, "no new session of alice went to the other node"
    read = "print(open('kept.txt').read(), v + 1)"
    async with deployment.front_ends[1].client("alice") as client:
        restored = await client.call_tool(
            "restore_session", {"snapshot_id": snapshot, "session": others[0]}
        )
        assert not restored.is_error, text_of(restored)
        forked = await client.call_tool(
            "fork_session", {"snapshot_id": snapshot, "count": 2, "prefix": "twin"}
        )
        assert not forked.is_error, text_of(forked)
        for name in (others[0], "twin-1", "twin-2"):
            got = await client.call_tool("run_code", {"session": name, "code": read})
            assert "from origin 42" in text_of(got), (name, text_of(got))


async def test_one_scrape_of_a_front_end_shows_the_cluster(deployment: Deployment) -> None:
    served = set()
    for n in range(4):  # bob's new sessions spread: calls on both nodes
        await run_code(deployment, n % 2, "bob", session=f"metered-{n}", code="print(1)")
        served.add(node_of(deployment, "bob", f"named:metered-{n}"))
        if len(served) == 2:
            break
    assert served == {"head", "second"}
    headers = bearer("bob")
    url = deployment.front_ends[0].url.removesuffix("/mcp") + "/metrics"
    async with httpx.AsyncClient(headers=headers, timeout=CALL_TIMEOUT_S) as http:
        response = await http.get(url)
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    routed = families["sandgate_cluster_calls_routed"].samples
    assert sum(s.value for s in routed if s.name.endswith("_total")) >= 1
    assert families["sandgate_cluster_nodes"].samples[0].value == 2
    nodes = {s.labels["node"] for s in families["sandgate_calls"].samples}
    assert nodes == set(deployment.node_names), "every node's own metrics, labelled"


async def test_a_grant_holds_at_most_its_cap_of_sessions_in_the_whole_cluster(
    deployment: Deployment,
) -> None:
    headers = bearer("erin")
    async with (
        deployment.front_ends[0].client("erin") as one,
        deployment.front_ends[1].client("erin") as other,
        httpx.AsyncClient(timeout=CALL_TIMEOUT_S) as http,
    ):
        own = RawSession(http, deployment.front_ends[0].url, headers)
        sid = await own.initialize()
        status, ran = await own.call_tool("run_code", {"code": "pass"})  # its MCP session's own
        assert status == 200 and not wrote_error(ran), ran
        before = runs_used(deployment, "erin")
        names = [f"capped-{n}" for n in range(SESSIONS_MAX)]  # one more than erin has room for
        results = await asyncio.gather(  # at once, through both front ends
            *(
                (one, other)[n % 2].call_tool("run_code", {"session": name, "code": "pass"})
                for n, name in enumerate(names)
            )
        )
        opened = [name for name, r in zip(names, results, strict=True) if not r.is_error]
        refused = [r for r in results if r.is_error]
        assert len(opened) == SESSIONS_MAX - 1 and len(refused) == 1, [text_of(r) for r in refused]
        assert {node_of(deployment, "erin", f"named:{n}") for n in opened} == {"head", "second"}
        assert refused[0].structured_content is not None
        assert refused[0].structured_content["status"] == "invalid"
        assert refused[0].structured_content["rule"] == "/server/max_sessions_per_grant"
        assert f"server.max_sessions_per_grant = {SESSIONS_MAX}" in text_of(refused[0])
        (left_out,) = set(names) - set(opened)
        assert route_of(deployment, "erin", f"named:{left_out}") is None, "nothing placed"
        assert runs_used(deployment, "erin") == before + len(opened), "nothing counted"
        denied = [
            r
            for r in audit(deployment)
            if r.grant == "erin" and r.rule == "/server/max_sessions_per_grant"
        ]
        assert [r.decision for r in denied] == ["deny"], "audited once, as a refusal"

        beside = await run_code(deployment, 1, "bob", session="beside-erin", code="print(2)")
        assert not beside.is_error, text_of(beside)

        assert await own.delete() == 200  # ending a session frees its place at once
        again = await one.call_tool("run_code", {"session": left_out, "code": "print(3)"})
        assert not again.is_error, text_of(again)
    assert route_of(deployment, "erin", f"http:{sid}") is None


def inflight_sessions(deployment: Deployment) -> set[str]:
    """Sessions with a call decided and not yet settled, from the Redis in-flight table."""
    client = redis.Redis.from_url(deployment.redis_url, decode_responses=True)
    try:
        found: set[str] = set()
        for key in client.scan_iter(f"{INFLIGHT_PREFIX}*"):
            for raw in cast(list[str], client.hvals(key)):
                found.add(json.loads(raw)["session"])
        return found
    finally:
        client.close()


def runs_used(deployment: Deployment, grant: str) -> int:
    store = RedisCounterStore(deployment.redis_url)
    try:
        spec = CounterSpec(f"runs|grant={grant}", window_s=3600.0, max=RUNS_MAX)
        return store.used(spec, time.time())[0]
    finally:
        store.close()


async def test_a_node_lost_mid_load_loses_only_its_calls_and_says_so(
    deployment: Deployment,
) -> None:
    names = [f"k{n}" for n in range(6)]
    for n, name in enumerate(names):
        made = await run_code(
            deployment, n % 2, "dave", session=name, code="open('f','w').write('x')\nkept = 5"
        )
        assert not made.is_error, text_of(made)
    where = {name: node_of(deployment, "dave", f"named:{name}") for name in names}
    doomed = [n for n in names if where[n] == "second"]
    spared = [n for n in names if where[n] == "head"]
    assert len(doomed) >= 2 and spared, where
    async with deployment.front_ends[0].client("dave") as client:
        taken = await client.call_tool("snapshot_session", {"session": doomed[0]})
    assert not taken.is_error, text_of(taken)
    snapshot = taken.structured_content["snapshot"]["id"]
    before = runs_used(deployment, "dave")
    assert before == len(names)

    async def load(n: int, name: str) -> Any:
        code = "import time\ntime.sleep(300 if %r else 1)\nprint('done')" % (name in doomed)
        return await run_code(deployment, n % 2, "dave", session=name, code=code)

    calls = [asyncio.create_task(load(n, name)) for n, name in enumerate(names)]
    await until(
        "the doomed calls are in flight",
        lambda: {f"named:{n}" for n in doomed} <= inflight_sessions(deployment),
    )
    assert deployment.cluster.kill("second") > 0
    answers = dict(zip(names, await asyncio.gather(*calls), strict=True))

    for name in doomed:
        lost = answers[name]
        assert lost.is_error
        assert "was lost while it ran this call" in text_of(lost)
        assert "not run again" in text_of(lost)
    for name in spared:
        assert not answers[name].is_error and "done" in text_of(answers[name])
    assert runs_used(deployment, "dave") == before + len(spared), "lost calls rolled back"
    records = [r for r in audit(deployment) if r.grant == "dave" and r.tool == "run_code"]
    load_decisions = [r.id for r in records if r.event == "decision"][len(names) :]
    outcomes = [r for r in records if r.event == "outcome"]
    for decision in load_decisions:
        assert len([o for o in outcomes if o.id == decision]) == 1, "each call ended once"
    assert sum(o.outcome == "infra_error" for o in outcomes) == len(doomed)
    assert not inflight_sessions(deployment)

    look = "import os\nprint('files', os.path.exists('f'), 'kept' in globals())"
    restored = await run_code(deployment, 1, "dave", session=doomed[0], code=look)
    assert not restored.is_error, text_of(restored)
    assert "restored on node" in text_of(restored) and snapshot in text_of(restored)
    assert "files True True" in text_of(restored), "files and variables from the snapshot"
    again = await run_code(deployment, 1, "dave", session=doomed[1], code=look)
    assert not again.is_error, text_of(again)
    assert "lost with Ray node" in text_of(again) and "it has no snapshot" in text_of(again)
    assert "files False False" in text_of(again)
    assert node_of(deployment, "dave", f"named:{doomed[1]}") == "head"
    later = await run_code(deployment, 0, "dave", session=doomed[1], code="print('fine')")
    assert "lost" not in text_of(later) and "fine" in text_of(later)


async def test_a_front_end_killed_mid_call_leaves_the_session_to_the_other(
    deployment: Deployment,
) -> None:
    first = await run_code(deployment, 0, "bob", session="fe", code="open('a','w').write('A')")
    assert not first.is_error, text_of(first)
    slow = asyncio.create_task(
        run_code(deployment, 0, "bob", session="fe", code="import time\ntime.sleep(3)\nprint('z')")
    )
    await until("the call is in flight", lambda: "named:fe" in inflight_sessions(deployment))
    deployment.front_ends[0].process.kill()
    with pytest.raises(ExceptionGroup) as cut:  # the connection went with the front end
        await asyncio.wait_for(slow, WAIT_S)
    assert cut.group_contains(httpx.RemoteProtocolError)
    served = await run_code(deployment, 1, "bob", session="fe", code="print(open('a').read())")
    assert not served.is_error and "A" in text_of(served)
    await until("the killed call is settled", lambda: not inflight_sessions(deployment))
    records = [r for r in audit(deployment) if r.grant == "bob" and r.session == "named:fe"]
    decisions = [r.id for r in records if r.event == "decision"]
    assert len(decisions) == 3
    killed = decisions[1]
    assert len([r for r in records if r.event == "outcome" and r.id == killed]) == 1
