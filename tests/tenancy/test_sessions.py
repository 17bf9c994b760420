"""Sessions belong to the grant that opened them, on every engine, over real streamable HTTP.

Another grant's MCP session id is "not found" (nothing of it runs or ends); named sessions of
two grants with the same name are two sessions; a `DELETE` of one's own session ends it (its
interpreter and workspace go, and its place in the grant's session count comes back).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.tenancy._server import (
    TenantServer,
    engine_params,
    initialize_message,
    mcp_headers,
    result_text,
    tenant_policy,
    tenant_server,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SET_SECRET = "import builtins\nbuiltins.SECRET = 'alice-only'\nopen('mine.txt', 'w').write('a')"
PEEK = "import builtins, os\nprint(getattr(builtins, 'SECRET', 'none'), os.path.exists('mine.txt'))"


def kept(server: TenantServer, files: str) -> str:
    """What PEEK prints in Alice's session: her global (the tenant policy keeps each
    session's interpreter, `state: persistent`, on every engine) and whether her file is
    there."""
    return f"alice-only {files}"


@pytest.fixture(params=engine_params())
def server(request: pytest.FixtureRequest, tmp_path: Path) -> TenantServer:
    policy = tenant_policy(request.param, state="persistent")
    with tenant_server(tmp_path, request.param, policy=policy) as running:
        yield running  # type: ignore[misc]


async def test_another_grants_session_id_is_not_found(server: TenantServer) -> None:
    async with server.raw("alice") as alice, server.raw("bob") as bob:
        status, answer = await alice.call_tool("run_code", {"code": SET_SECRET})
        assert status == 200 and answer is not None and "result" in answer

        stolen, _ = await bob.call_tool("run_code", {"code": PEEK}, session_id=alice.session_id)
        assert stolen == 404
        assert await bob.delete(session_id=alice.session_id) == 404

        status, answer = await alice.call_tool("run_code", {"code": PEEK})
        assert status == 200 and answer is not None
        assert answer["result"]["structuredContent"]["stdout"].strip() == kept(server, "True")


async def test_named_sessions_of_two_grants_are_two_sessions(server: TenantServer) -> None:
    async with server.raw("alice") as alice, server.raw("bob") as bob:
        named = {"session": "shared-x"}
        _, set_answer = await alice.call_tool("run_code", {"code": SET_SECRET, **named})
        assert set_answer is not None and not set_answer["result"].get("isError")

        _, peek = await bob.call_tool(
            "run_code",
            {"code": PEEK + "\nimport builtins\nbuiltins.SECRET = 'bob-was-here'", **named},
        )
        assert peek is not None
        assert peek["result"]["structuredContent"]["stdout"].strip() == "none False"

        _, again = await alice.call_tool("run_code", {"code": PEEK, **named})
        assert again is not None
        assert again["result"]["structuredContent"]["stdout"].strip() == kept(server, "True")


@pytest.mark.parametrize("engine", engine_params())
async def test_deleting_ones_own_session_ends_it_and_frees_its_place(
    tmp_path: Path, engine: str
) -> None:
    sections = "server:\n  max_sessions_per_grant: 2\n"
    with tenant_server(tmp_path, engine, policy=tenant_policy(engine, sections=sections)) as srv:
        for _ in range(4):  # twice the grant's maximum, one after the other
            async with srv.raw("alice") as alice:
                _, answer = await alice.call_tool("run_python_code", {"code": "print(6*7)"})
                assert result_text(answer).strip() == "42"
                workspaces = list((srv.state_dir / "workspaces").glob("*/*"))
                assert len(workspaces) == 1
                assert await alice.delete() in (200, 204)
                gone, _ = await alice.call_tool("run_python_code", {"code": "print(1)"})
                assert gone == 404
            remaining = list((srv.state_dir / "workspaces").glob("*/*"))
            assert remaining == []


async def test_one_grant_opening_many_sessions_does_not_lock_out_another(
    server: TenantServer,
) -> None:
    """Alice opens more sessions than a pool holds, each running once, four at a time (more
    live interpreters than the engine keeps: 8 containers, 16 wasm, 32 Pyodide); Bob is still
    served."""
    many = 12 if server.engine in ("wasm", "container", "gvisor") else 36
    sessions = []

    async def open_and_run() -> None:
        raw = server.raw("alice")
        alice = await raw.__aenter__()
        sessions.append(raw)
        _, answer = await alice.call_tool("pyodide_execute", {"code": "6*7"})
        assert answer is not None and "result" in answer

    try:
        for _ in range(0, many, 4):
            await asyncio.gather(*(open_and_run() for _ in range(4)))
        async with server.raw("bob") as bob:
            _, answer = await asyncio.wait_for(
                bob.call_tool("pyodide_execute", {"code": "print(6*7)"}), 60
            )
            text = result_text(answer)
            assert "busy" not in text and "42" in text
    finally:
        for raw in sessions:
            await raw.__aexit__(None, None, None)


@pytest.mark.parametrize("engine", engine_params("wasm"))
async def test_a_grant_at_its_session_maximum_is_refused_while_others_open_theirs(
    tmp_path: Path, engine: str
) -> None:
    sections = "server:\n  max_sessions_per_grant: 2\n"
    with tenant_server(tmp_path, engine, policy=tenant_policy(engine, sections=sections)) as srv:
        async with srv.raw("alice") as first, srv.raw("alice"):
            refused = await _open_status(srv, "alice")
            assert refused == 429
            async with srv.raw("bob") as bob:
                _, answer = await bob.call_tool("run_python_code", {"code": "print(6*7)"})
                assert result_text(answer).strip() == "42"
            assert await first.delete() == 200
            assert await _open_status(srv, "alice") == 200


async def _open_status(server: TenantServer, grant: str) -> int:
    """The HTTP status of an `initialize` that would open a new session of `grant`."""
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(
            server.url,
            headers=mcp_headers(server.headers(grant)),
            json=initialize_message("tenancy-test", rid=1),
        )
        return response.status_code


@pytest.mark.parametrize("engine", engine_params("pyodide"))
async def test_a_reclaimed_interpreter_is_paused_and_resumed_for_its_session(
    tmp_path: Path, engine: str
) -> None:
    """Alice holds more Pyodide sessions than her share: her least recently used idle one gives
    its interpreter up (paused to disk), and its next call resumes it with its globals."""
    with tenant_server(tmp_path, engine) as srv:
        oldest = srv.raw("alice")
        first = await oldest.__aenter__()
        others = []
        try:
            _, answer = await first.call_tool("pyodide_execute", {"code": "kept = 41"})
            assert answer is not None and not answer["result"].get("isError")
            for _ in range(16):  # the default share: half of the engine's 32 interpreters
                raw = srv.raw("alice")
                session = await raw.__aenter__()
                others.append(raw)
                await session.call_tool("pyodide_execute", {"code": "6*7"})
            metrics = await first.http.get(srv.base + "/metrics", headers=srv.headers("bob"))
            assert 'sandgate_pool{engine="pyodide",what="paused"} 1.0' in metrics.text
            _, again = await first.call_tool("pyodide_execute", {"code": "kept + 1"})
            assert result_text(again) == "Result: 42"
        finally:
            for raw in others:
                await raw.__aexit__(None, None, None)
            await oldest.__aexit__(None, None, None)


@pytest.mark.parametrize("engine", engine_params("wasm"))
async def test_a_grant_past_its_share_of_disk_cannot_start_sessions_while_others_can(
    tmp_path: Path, engine: str
) -> None:
    sections = "server:\n  max_workspace_bytes_total: 1000000\n  grant_share: 0.5\n"
    policy = tenant_policy(engine, sections=sections)
    data = {"data.txt": "x" * 300_000}
    with tenant_server(tmp_path, engine, policy=policy) as srv:
        async with srv.raw("alice") as alice, srv.raw("bob") as bob:
            _, answer = await bob.call_tool("run_code", {"code": "print(1)"})
            assert answer is not None and not answer["result"].get("isError")
            for name in ("one", "two"):
                _, answer = await alice.call_tool(
                    "run_code", {"code": "print(1)", "session": name, "files": data}
                )
                assert answer is not None and not answer["result"].get("isError")
            _, refused = await alice.call_tool("run_code", {"code": "print(1)", "session": "3"})
            assert refused is not None and refused["result"]["isError"]
            assert "server.grant_share" in result_text(refused)
            _, served = await bob.call_tool("run_code", {"code": "print(1)", "session": "new"})
            assert served is not None and not served["result"].get("isError")
            _, same = await alice.call_tool("run_code", {"code": "print(2)", "session": "one"})
            assert same is not None and not same["result"].get("isError")
        denials = [r for r in srv.audit() if r.get("rule") == "/server/grant_share"]
        assert [r["grant"] for r in denials] == ["alice"]


READ_OWNER = (
    "import builtins, pathlib\n"
    "print(getattr(builtins, 'OWNER', '-'), pathlib.Path('owner.txt').read_text())"
)


async def test_three_grants_at_once_each_see_only_their_own_session(
    server: TenantServer,
) -> None:
    """Alice, Bob and Carol use a session of the same name at the same time, several rounds:
    each reads back only what it wrote: files, and globals (each session keeps its own
    interpreter)."""

    async def tenant(grant: str) -> list[str]:
        seen = []
        async with server.raw(grant) as raw:
            for round_ in range(3):
                code = (
                    "import builtins, pathlib\n"
                    f"builtins.OWNER = '{grant}-{round_}'\n"
                    f"pathlib.Path('owner.txt').write_text('{grant}-{round_}')\n"
                    "print(pathlib.Path('owner.txt').read_text())"
                )
                _, answer = await raw.call_tool("run_code", {"code": code, "session": "same"})
                assert answer is not None, grant
                wrote = answer["result"]["structuredContent"]
                assert wrote["status"] == "ok", repr((grant, round_, wrote))
                seen.append(wrote["stdout"].strip())
                _, peek = await raw.call_tool("run_code", {"code": READ_OWNER, "session": "same"})
                assert peek is not None, grant
                said = peek["result"]["structuredContent"]
                assert said["status"] == "ok" and said["stdout"], repr((grant, round_, said))
                seen.append(said["stdout"].strip())
        return seen

    grants = ("alice", "bob", "carol")
    seen = await asyncio.gather(*(tenant(g) for g in grants))
    for grant, lines in zip(grants, seen, strict=True):
        for round_ in range(3):
            mine = f"{grant}-{round_}"
            assert lines[2 * round_ : 2 * round_ + 2] == [mine, f"{mine} {mine}"], lines
