"""Cancelling a call is a normal ending, on every engine, over stdio and streamable HTTP.

A cancelled run is stopped, its sandbox replaced (or its engine's capacity restored), and its
session's files are back before the session's next call; the run counts against the caller's
limits (the audit says `cancelled`), and no answer goes out for the cancelled request. The
calls are cancelled the way MCP clients do it, with `notifications/cancelled`; more calls are
cancelled than the server runs at once, then every client must still be served in full.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx2 as httpx
import pytest

from sandboxes import ExecutionPlan, Limits, Program, WasmEngine, WorkspacePaths
from tests.front_ends import until
from tests.tenancy._server import (
    TOOLS,
    TenantServer,
    engine_params,
    initialize_message,
    mcp_headers,
    prepare_engine,
    sse_messages,
    tenant_policy,
    tenant_server,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKERS = 2
"""Runs the servers (and the engine) under test run at once."""
CANCELS = WORKERS + 1
"""Calls cancelled: more than run at once, so one of them is cancelled while it waits."""
SPIN = "while True:\n    pass"
WAIT_S = 90.0
"""Bound of every wait for the server (a start-up, an audit record, a call's end)."""
SERVED_S = 45.0
"""Bound of the calls that show full capacity: well under the policy's 60 s run timeout, so a
worker still busy with a cancelled `while True` would make them miss it."""
RATE_RULE = "/tools/run_python_code/limits/executions"


def limited_tools() -> str:
    """Every tool allowed; `run_python_code` only `CANCELS` times a minute per grant."""
    others = "".join(f"  {name}: {{}}\n" for name in TOOLS if name != "run_python_code")
    return others + (
        "  run_python_code:\n    limits:\n"
        f"      - {{counter: executions, window: minute, max: {CANCELS}, scope: grant}}\n"
    )


def read_audit(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def count(state_dir: Path, **fields: str) -> int:
    """Audit records of `run_python_code` with these fields."""
    return sum(
        1
        for r in read_audit(state_dir)
        if r.get("tool") == "run_python_code" and all(r.get(k) == v for k, v in fields.items())
    )


def text_of(message: dict[str, Any] | None) -> str:
    assert message is not None and "result" in message, message
    return "".join(block.get("text", "") for block in message["result"].get("content", []))


def call(rid: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def cancel(rid: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": rid, "reason": "the user gave up"},
    }


# ---- the engine alone ---------------------------------------------------------------------


def _workspace(folder: Path, text: str) -> WorkspacePaths:
    files, site = folder / "files", folder / "site"
    files.mkdir(parents=True)
    site.mkdir()
    (files / "keep.txt").write_text(text)
    return WorkspacePaths(files, site)


def _plan(workspace: WorkspacePaths, code: str) -> ExecutionPlan:
    return ExecutionPlan(
        decision_id="cancel-test",
        engine="wasm",
        program=Program("code", code, None),
        limits=Limits(wall_timeout_s=60.0),
        workspace=workspace,
        session_id=workspace.files.parent.name,
    )


class _Running:
    """A run in a task of its own, cancelled as asyncio does (`Task.cancel`) or as the MCP SDK
    does (an anyio cancel scope, which cancels again at every await of the clean-up)."""

    def __init__(self, engine: WasmEngine, plan: ExecutionPlan, how: str) -> None:
        self._how = how
        self._scope = anyio.CancelScope()

        async def run() -> None:
            with self._scope:
                await engine.run(plan)

        self.task = asyncio.ensure_future(run())

    async def cancel(self) -> None:
        """Cancel the run and return once it has ended."""
        if self._how == "anyio":
            self._scope.cancel()
        else:
            self.task.cancel()
        async with asyncio.timeout(WAIT_S):
            await asyncio.wait({self.task})
        if self._how == "anyio":
            assert self.task.exception() is None and self._scope.cancelled_caught
        else:
            assert self.task.cancelled()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False


@pytest.mark.wasm
@pytest.mark.parametrize("how", ["anyio", "asyncio"])
async def test_cancelled_wasm_runs_give_back_their_workers_and_files(
    tmp_path: Path, how: str
) -> None:
    sessions = [_workspace(tmp_path / f"s{i}", f"kept {i}") for i in range(CANCELS)]
    scratch = _workspace(tmp_path / "scratch", "")
    async with WasmEngine(workers=WORKERS, slots_dir=tmp_path / "slots") as engine:
        await engine.wait_ready()
        for _ in range(2):  # 2 x 3 cancels, each round with one call waiting for a worker
            await until("all workers idle", lambda: engine.pool_stats()["idle"] == WORKERS)
            for _ in range(WORKERS):  # one call each: every worker then prepares a guest, which
                await engine.run(_plan(scratch, "pass"))  # moves a session's files in
            pids = engine.worker_pids()
            runs = [_Running(engine, _plan(ws, SPIN), how) for ws in sessions]
            await until(
                "every worker running, one call waiting",
                lambda: engine.pool_stats()["idle"] == 0 and engine.pool_stats()["waiting"] == 1,
            )
            for run in runs:
                await run.cancel()
            for i, ws in enumerate(sessions):  # back in place as soon as the call has ended
                assert (ws.files / "keep.txt").read_text() == f"kept {i}"
            assert not [pid for pid in pids if _alive(pid)]  # the guests were stopped

        async with asyncio.timeout(SERVED_S):
            results = await asyncio.gather(
                *(engine.run(_plan(ws, "print(open('keep.txt').read())")) for ws in sessions)
            )
        assert [(r.status, r.stdout) for r in results] == [
            ("ok", f"kept {i}\n") for i in range(CANCELS)
        ]
        await until("the workers replaced", lambda: engine.pool_stats()["workers"] == WORKERS)
        assert len(engine.worker_pids()) == WORKERS


# ---- over the wire: the same story on stdio and on streamable HTTP ------------------------


class Wire(Protocol):
    """One client connection (one MCP session) spoken by hand, requests in flight at once."""

    def call(self, rid: int, name: str, arguments: dict[str, Any]) -> asyncio.Task[Any]:
        """Send a `tools/call`; the task ends with the messages that came for it."""
        ...

    async def cancel(self, rid: int) -> None:
        """Send `notifications/cancelled` for request `rid`."""
        ...

    async def answers_to_cancelled(self, calls: dict[int, asyncio.Task[Any]]) -> list[Any]:
        """Every message that answered one of the cancelled `calls` (there should be none)."""
        ...


async def _story(state_dir: Path, wire: Wire, serve_others: Callable[[], Any]) -> None:
    """Save a file, cancel `CANCELS` spinning calls, then: the audit says `cancelled`, no
    answer went out for them, the rate limit counted them, the file is there, and the server
    serves `WORKERS` calls at once."""
    code = "print('kept')"
    saved = await wire.call(1, "save_to_file_and_run", {"file_name": "keep.py", "code": code})
    assert text_of(_answer(saved, 1)).splitlines()[-1] == "kept"

    rids = range(10, 10 + CANCELS)
    spinning = {rid: wire.call(rid, "run_python_code", {"code": SPIN}) for rid in rids}
    await until("every call allowed", lambda: count(state_dir, decision="allow") == CANCELS)
    for rid in rids:
        await wire.cancel(rid)
    await until("every call cancelled", lambda: count(state_dir, outcome="cancelled") == CANCELS)
    assert count(state_dir, outcome="infra_error") == 0

    over = await wire.call(2, "run_python_code", {"code": "print(1)"})
    assert _answer(over, 2)["result"]["isError"] is True
    denials = [r for r in read_audit(state_dir) if r.get("decision") == "deny"]
    assert [r["rule"] for r in denials] == [RATE_RULE]  # the cancelled calls counted

    again = await wire.call(3, "run_python_file", {"file_name": "keep.py"})
    assert "kept" in text_of(_answer(again, 3)).splitlines()  # the session's files are back

    async with asyncio.timeout(SERVED_S):
        await serve_others()
    assert await wire.answers_to_cancelled(spinning) == []


def _answers_for(messages: list[dict[str, Any]], rid: int) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("id") == rid and ("result" in m or "error" in m)]


def _answer(messages: list[dict[str, Any]], rid: int) -> dict[str, Any]:
    found = _answers_for(messages, rid)
    assert len(found) == 1, messages
    return found[0]


# ---- streamable HTTP -----------------------------------------------------------------------


class _HttpWire:
    """One MCP session of a grant, spoken by hand: several requests in flight at once."""

    def __init__(self, http: httpx.AsyncClient, server: TenantServer, grant: str) -> None:
        self._http = http
        self._server = server
        self._headers = mcp_headers(server.headers(grant))

    async def open(self) -> None:
        response = await self._post(initialize_message("cancel-test"))
        assert response.status_code == 200, response.text
        self._headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        note = await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert note.status_code == 202

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        return await self._http.post(self._server.url, headers=self._headers, json=body)

    def call(self, rid: int, name: str, arguments: dict[str, Any]) -> asyncio.Task[Any]:
        async def post() -> list[dict[str, Any]]:
            response = await self._post(call(rid, name, arguments))
            assert response.status_code == 200, response.text
            return sse_messages(response)

        return asyncio.ensure_future(post())

    async def cancel(self, rid: int) -> None:
        assert (await self._post(cancel(rid))).status_code == 202

    async def answers_to_cancelled(self, calls: dict[int, asyncio.Task[Any]]) -> list[Any]:
        """The event stream of each cancelled call has ended; what it carried for its id."""
        async with asyncio.timeout(WAIT_S):
            return [a for rid, task in calls.items() for a in _answers_for(await task, rid)]


@asynccontextmanager
async def _http_wire(server: TenantServer, grant: str) -> AsyncIterator[_HttpWire]:
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        wire = _HttpWire(http, server, grant)
        await wire.open()
        yield wire


@pytest.mark.parametrize("engine", engine_params())
async def test_cancelled_calls_over_http_count_and_leave_the_server_whole(
    tmp_path: Path, engine: str
) -> None:
    policy = tenant_policy(engine, tools=limited_tools()).replace("timeout_s: 30", "timeout_s: 60")
    with tenant_server(tmp_path, engine, policy=policy, workers=WORKERS) as server:
        async with _http_wire(server, "alice") as alice:

            async def serve_others() -> None:
                async with _http_wire(server, "bob") as bob, _http_wire(server, "carol") as carol:
                    code = {"code": "print(6*7)"}
                    answers = await asyncio.gather(
                        bob.call(7, "run_python_code", code), carol.call(7, "run_python_code", code)
                    )
                    assert [text_of(_answer(a, 7)).strip() for a in answers] == ["42", "42"]

            await _story(server.state_dir, alice, serve_others)
        if engine == "wasm":
            async with httpx.AsyncClient(timeout=WAIT_S) as http:
                metrics = await http.get(server.base + "/metrics", headers=server.headers("bob"))
            assert f'sandgate_pool{{engine="wasm",what="workers"}} {WORKERS:.1f}' in metrics.text


# ---- stdio ---------------------------------------------------------------------------------


class _StdioWire:
    """`sandgate serve` on stdio, spoken by hand (one JSON message a line)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.messages: list[dict[str, Any]] = []
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            message = json.loads(line)
            self.messages.append(message)
            waiter = self._waiting.pop(message.get("id", -1), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def send(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message).encode() + b"\n")
        await self._process.stdin.drain()

    async def request(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Send a request; once its answer came, every message read so far."""
        waiter = self._waiting[message["id"]] = asyncio.get_running_loop().create_future()
        await self.send(message)
        async with asyncio.timeout(WAIT_S):
            await waiter
        return list(self.messages)

    def call(self, rid: int, name: str, arguments: dict[str, Any]) -> asyncio.Task[Any]:
        return asyncio.ensure_future(self.request(call(rid, name, arguments)))

    async def cancel(self, rid: int) -> None:
        await self.send(cancel(rid))

    async def answers_to_cancelled(self, calls: dict[int, asyncio.Task[Any]]) -> list[Any]:
        """Later requests were answered on the same stream: nothing came for the cancelled."""
        for task in calls.values():
            task.cancel()
        await asyncio.gather(*calls.values(), return_exceptions=True)
        return [m for m in self.messages if m.get("id") in calls]


@contextmanager
def _stdio_server(tmp_path: Path, engine: str) -> Iterator[list[str]]:
    prepare_engine(engine)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        f"all_tools:\n  engine: {engine}\n"
        "quotas:\n  timeout_s: 60\n  memory_mb: 256\n"
        f"tools:\n{limited_tools()}"
    )
    yield [
        sys.executable,
        "-m",
        "runner",
        "serve",
        "--policy",
        str(policy),
        "--state-dir",
        str(tmp_path / "state"),
        "--workers",
        str(WORKERS),
    ]


@pytest.mark.parametrize("engine", engine_params())
async def test_cancelled_calls_over_stdio_count_and_leave_the_server_whole(
    tmp_path: Path, engine: str
) -> None:
    with _stdio_server(tmp_path, engine) as argv, (tmp_path / "stderr").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        try:
            wire = _StdioWire(process)
            await wire.request(initialize_message("cancel-test"))
            await wire.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

            async def serve_others() -> None:
                code = {"code": "print(6*7)"}
                rids = [20 + i for i in range(WORKERS)]
                await asyncio.gather(*(wire.request(call(rid, "run_code", code)) for rid in rids))
                for rid in rids:
                    found = _answer(wire.messages, rid)
                    assert found["result"]["structuredContent"]["stdout"] == "42\n"

            await _story(tmp_path / "state", wire, serve_others)
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                async with asyncio.timeout(WAIT_S):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


async def test_a_call_cancelled_before_it_arrives_is_not_run_nor_answered(tmp_path: Path) -> None:
    """Over HTTP a call and its cancel are two POSTs, and a client that cancels at once (the
    TypeScript SDK aborting a call) can have its cancel served first: the call must then not
    run (its file is never written) and get no answer, and the session goes on."""
    with tenant_server(tmp_path, "wasm") as server:
        async with _http_wire(server, "alice") as alice:
            await alice.cancel(5)
            late = alice.call(5, "run_python_code", {"code": "open('ran.txt', 'w').write('1')"})
            assert await alice.answers_to_cancelled({5: late}) == []
            listing = {"code": "import os\nprint('files:', sorted(os.listdir()))"}
            check = await alice.call(6, "run_python_code", listing)
            assert text_of(_answer(check, 6)).strip() == "files: []"
