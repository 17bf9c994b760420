"""A real `sandgate serve --transport streamable-http` with three grants, and clients per grant.

Every tool the server has is routed to one engine profile (`wasm`, `pyodide`, `container`,
`gvisor`), so one test body runs against each boundary. Clients speak real streamable HTTP:
the SDK's client (`TenantServer.client`) or raw JSON-RPC (`RawSession`), which lets a test send
another grant's `Mcp-Session-Id` or a `DELETE`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from runner.tools import TOOLS_BY_NAME
from tests.processes import serving_http

GRANTS = ("alice", "bob", "carol")
START_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 120.0
PROTOCOL_VERSION = "2025-06-18"

ENGINE_MARKS: dict[str, tuple[pytest.MarkDecorator, ...]] = {
    "wasm": (pytest.mark.wasm,),
    "pyodide": (pytest.mark.pyodide,),
    "container": (pytest.mark.container,),
    "gvisor": (pytest.mark.container,),
}
"""Engine profile → the markers of the tests that need it."""

TOOLS = tuple(TOOLS_BY_NAME)


def engine_params(*engines: str) -> list[Any]:
    """`pytest.param`s for the engine profiles (all four when none named), with their marks."""
    return [pytest.param(e, marks=ENGINE_MARKS[e], id=e) for e in (engines or tuple(ENGINE_MARKS))]


def token_of(grant: str) -> str:
    """The bearer token of a test grant."""
    return f"test-token-of-{grant}-" + hashlib.sha256(grant.encode()).hexdigest()[:16]


def tenant_policy(
    engine: str, *, tools: str | None = None, sections: str = "", state: str | None = None
) -> str:
    """A policy (YAML) with the three grants and every tool allowed on `engine`.

    Args:
        engine: The engine profile every tool is routed to.
        state: `persistent` or `fresh` for every tool (None: each tool's own default).
        tools: The `tools:` section's body instead of every tool allowed (indented 2 spaces).
        sections: More top-level YAML (e.g. `server:` or `approvals:`).
    """
    grants = "".join(
        f"  {g}: {{token_sha256: '{hashlib.sha256(token_of(g).encode()).hexdigest()}'}}\n"
        for g in GRANTS
    )
    body = tools if tools is not None else "".join(f"  {name}: {{}}\n" for name in TOOLS)
    kept = f"  state: {state}\n" if state else ""
    return (
        "version: '1'\ndefault: deny\n"
        f"grants:\n{grants}"
        f"all_tools:\n  engine: {engine}\n{kept}"
        "quotas:\n  timeout_s: 30\n  memory_mb: 256\n"
        f"tools:\n{body}"
        f"{sections}"
    )


@dataclass
class TenantServer:
    """A running server: its MCP URL, its state folder and the process."""

    url: str
    engine: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    tokens: dict[str, str] = field(default_factory=lambda: {g: token_of(g) for g in GRANTS})

    @property
    def base(self) -> str:
        """The server's root URL (`/metrics` lives there)."""
        return self.url.rsplit("/", 1)[0]

    def headers(self, grant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[grant]}"}

    @asynccontextmanager
    async def client(self, grant: str) -> AsyncIterator[Client]:
        """An initialized MCP client of `grant` (its own MCP session)."""
        async with (
            httpx.AsyncClient(headers=self.headers(grant), timeout=CALL_TIMEOUT_S) as http,
            Client(streamable_http_client(self.url, http_client=http)) as client,
        ):
            yield client

    @asynccontextmanager
    async def raw(self, grant: str) -> AsyncIterator[RawSession]:
        """A raw JSON-RPC session of `grant`, initialized (see `RawSession`)."""
        async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
            session = RawSession(http, self.url, self.headers(grant))
            await session.initialize()
            yield session

    def audit(self) -> list[dict[str, Any]]:
        """Every record of the server's audit trail so far."""
        path = self.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class RawSession:
    """Streamable HTTP by hand: JSON-RPC posts carrying an `Mcp-Session-Id` of our choice."""

    http: httpx.AsyncClient
    url: str
    headers: dict[str, str]
    session_id: str | None = None
    _next_id: int = 1

    def _headers(self, session_id: str | None, grant_headers: dict[str, str] | None) -> Any:
        return mcp_headers(grant_headers or self.headers, session_id)

    async def initialize(self) -> str:
        """Open an MCP session; its id is kept and returned."""
        response = await self.http.post(
            self.url, headers=self._headers(None, None), json=initialize_message("tenancy-test")
        )
        assert response.status_code == 200, (response.status_code, response.text)
        self.session_id = response.headers["mcp-session-id"]
        note = await self.http.post(
            self.url,
            headers=self._headers(self.session_id, None),
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        )
        assert note.status_code in (200, 202), note.status_code
        return self.session_id

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """POST one request (in this session, or `session_id`, with other `headers`): the
        HTTP status and the JSON-RPC message that answered it (None when there was none)."""
        self._next_id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            body["params"] = params
        sid = session_id if session_id is not None else self.session_id
        response = await self.http.post(self.url, headers=self._headers(sid, headers), json=body)
        return response.status_code, _message_of(response)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], **how: Any
    ) -> tuple[int, dict[str, Any] | None]:
        return await self.request("tools/call", {"name": name, "arguments": arguments}, **how)

    async def delete(
        self, *, session_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """`DELETE` a session (this one by default); the HTTP status."""
        sid = session_id if session_id is not None else self.session_id
        response = await self.http.delete(self.url, headers=self._headers(sid, headers))
        return response.status_code


def mcp_headers(grant_headers: dict[str, str], session_id: str | None = None) -> dict[str, str]:
    """The headers of a streamable HTTP request of a grant (in `session_id`, when given)."""
    headers = {
        **grant_headers,
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": PROTOCOL_VERSION,
    }
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
    return headers


def initialize_message(client: str, rid: int = 0) -> dict[str, Any]:
    """An `initialize` request of a client that declares no capability."""
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": client, "version": "0"},
        },
    }


def sse_messages(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a JSON or server-sent-events answer, in order."""
    if not response.content:
        return []
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return [response.json()]
    return [
        json.loads(line[5:])
        for line in response.text.splitlines()
        if line.startswith("data:") and line[5:].strip()
    ]


def _message_of(response: httpx.Response) -> dict[str, Any] | None:
    """The JSON-RPC answer (a result or an error) in a JSON or server-sent-events answer."""
    answers = [m for m in sse_messages(response) if "result" in m or "error" in m]
    return answers[-1] if answers else None


def result_text(message: dict[str, Any] | None) -> str:
    """The text of a raw `tools/call` answer (its content blocks joined)."""
    assert message is not None and "result" in message, message
    return "".join(b.get("text", "") for b in message["result"].get("content", []))


def prepare_engine(engine: str) -> None:
    """What a server needs before it can run `engine` (the Pyodide assets, fetched once)."""
    if engine == "pyodide":
        from sandboxes.pyodide import setup_pyodide

        setup_pyodide()


@contextmanager
def tenant_server(
    tmp_path: Path,
    engine: str,
    *,
    policy: str | None = None,
    workers: int = 2,
    extra_args: tuple[str, ...] = (),
) -> Iterator[TenantServer]:
    """Start a server on loopback with `policy` (default: `tenant_policy(engine)`); stopped on
    exit whatever happened."""
    prepare_engine(engine)
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy if policy is not None else tenant_policy(engine))
    state_dir = tmp_path / "state"
    with serving_http(
        policy_path,
        state_dir,
        workers=workers,
        extra=extra_args,
        start_timeout_s=START_TIMEOUT_S,
    ) as (url, process):
        yield TenantServer(url, engine, state_dir, process)
