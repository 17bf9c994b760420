"""Fuzz `sandgate serve --transport streamable-http` with raw requests to `/mcp`: odd bodies,
odd headers, good and bad bearer tokens, live and bogus session ids.

Every answer must be 2xx or 4xx (never 5xx), carry no traceback, and be well-formed JSON-RPC
when it is JSON; the server must stay up and serve a real MCP client afterwards. The body cap
is the policy's `server.max_request_bytes`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import mcp_types as types
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.results import text_of

from ._checks import INTERNAL_ERROR, TRACEBACK, assert_clean_text
from ._processes import HttpServer
from ._strategies import encode, messages, raw_lines
from .conftest import fuzz_settings, write_fuzz_policy

pytestmark = [pytest.mark.wasm, pytest.mark.slow]

TOKEN = "fuzz-token-for-grant-alice"
MAX_REQUEST_BYTES = 1024 * 1024
PROTOCOL = "2025-06-18"
REQUEST_TIMEOUT_S = 60.0
ACCEPT = "application/json, text/event-stream"


@dataclass
class Live:
    server: HttpServer
    http: httpx.Client
    session_id: str


def _initialize(http: httpx.Client, url: str) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "0"},
        },
    }
    headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
    answer = http.post(url, content=encode(body), headers=headers)
    assert answer.status_code == 200, answer.text
    session_id = answer.headers["mcp-session-id"]
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    http.post(url, content=encode(done), headers={**headers, "mcp-session-id": session_id})
    return session_id


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("fuzz-http")
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    policy = write_fuzz_policy(
        folder,
        f"  max_request_bytes: {MAX_REQUEST_BYTES}\n"
        f"grants:\n  alice: {{token_sha256: '{digest}'}}\n",
    )
    server = HttpServer(folder / "state", policy, folder / "stderr.log")
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(headers=auth, timeout=REQUEST_TIMEOUT_S) as http:
            yield Live(server, http, _initialize(http, server.url))
    finally:
        server.close()


def _events(text: str) -> list[Any]:
    """The JSON payloads of a text/event-stream body."""
    found = []
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            found.append(json.loads(line[5:]))
    return found


def _check_message(message: Any) -> None:
    assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", message
    if "error" in message:
        assert isinstance(message["error"].get("code"), int), message
        assert isinstance(message["error"].get("message"), str), message


@dataclass
class Answer:
    status: int
    content_type: str
    body: str


STREAM_IDLE_S = 2.0
"""A GET may open the session's standing event stream: read it this long, then let go."""


def send(
    method: str, url: str, headers: dict[str, str], body: bytes, *, http: httpx.Client
) -> Answer:
    """One raw request; the answer's status, content type and (first MiB of) body."""
    idle = STREAM_IDLE_S if method == "GET" else REQUEST_TIMEOUT_S
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=idle)
    raw = {k.encode(): v.encode("latin-1") for k, v in headers.items()}  # any header byte
    with http.stream(method, url, headers=raw, content=body, timeout=timeout) as response:
        kind = response.headers.get("content-type", "")
        data = b""
        try:
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > 1024 * 1024:
                    break
        except httpx.ReadTimeout:
            assert method == "GET" and kind.startswith("text/event-stream"), (method, kind)
        return Answer(response.status_code, kind, data.decode("utf-8", "replace"))


def check_answer(answer: Answer) -> None:
    """2xx/4xx only; no traceback; JSON bodies are JSON-RPC messages."""
    body = answer.body
    assert answer.status < 500, f"{answer.status}: {body[:2000]}"
    assert TRACEBACK not in body, body[:2000]
    if INTERNAL_ERROR in body:
        raise AssertionError(f"an internal error answered a client's request: {body[:2000]}")
    if answer.content_type.startswith("text/event-stream"):
        for message in _events(body):
            _check_message(message)
            if "result" in message:
                assert_clean_text(json.dumps(message["result"]))
    elif answer.content_type.startswith("application/json") and body.strip():
        parsed = json.loads(body)
        for message in parsed if isinstance(parsed, list) else [parsed]:
            if isinstance(message, dict) and "jsonrpc" in message:
                _check_message(message)


latin1 = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=60)


@st.composite
def requests(draw: st.DrawFn, session_id: str) -> tuple[str, dict[str, str], bytes]:
    """(method, headers, body) of one raw HTTP request to /mcp."""
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "DELETE", "PUT", "PATCH", "OPTIONS"]))
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["good"] * 6 + ["none", "wrong", "scheme", "odd"]))
    if auth == "good":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif auth == "wrong":
        headers["Authorization"] = "Bearer not-the-token"
    elif auth == "scheme":
        headers["Authorization"] = f"Basic {TOKEN}"
    elif auth == "odd":
        headers["Authorization"] = draw(latin1)
    headers["Accept"] = draw(
        st.sampled_from([ACCEPT] * 4 + ["application/json", "text/html", "*/*", ""])
    )
    headers["Content-Type"] = draw(
        st.sampled_from(["application/json"] * 4 + ["text/plain", "", "application/json; x=y"])
    )
    sid = draw(st.sampled_from(["live"] * 5 + ["none", "bogus", "odd"]))
    if method == "DELETE" and sid == "live":
        sid = "bogus"  # the live session is kept for the other examples
    if sid == "live":
        headers["mcp-session-id"] = session_id
    elif sid == "bogus":
        headers["mcp-session-id"] = "0" * 32
    elif sid == "odd":
        headers["mcp-session-id"] = draw(latin1)
    if draw(st.integers(0, 3)):
        headers["mcp-protocol-version"] = draw(
            st.sampled_from([PROTOCOL, PROTOCOL, "2026-07-28", "1999-01-01", "x"])
        )
    body = draw(
        st.one_of(
            raw_lines(),
            raw_lines(),
            st.builds(lambda m: encode(m), messages()),
            st.binary(max_size=100),
            st.just(b""),
        )
    )
    return method, {k: v for k, v in headers.items() if v or k == "Accept"}, body


@fuzz_settings(scale=0.5)
@given(data=st.data())
def test_raw_requests_get_4xx_or_json_rpc_answers_never_5xx(
    live: Live, data: st.DataObject
) -> None:
    method, headers, body = data.draw(requests(live.session_id))
    try:
        with httpx.Client() as http:
            answer = send(method, live.server.url, headers, body, http=http)
    except httpx.LocalProtocolError:
        return  # a header the client library itself refuses to send
    check_answer(answer)
    assert live.server.alive, live.server.stderr_tail()


def test_a_request_without_a_good_token_gets_401(live: Live) -> None:
    ping = encode({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    with httpx.Client() as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer  x y"}):
            answer = send("POST", live.server.url, headers, ping, http=http)
            assert answer.status == 401, answer.body
            check_answer(answer)


def test_a_body_over_max_request_bytes_gets_413_and_the_server_goes_on(live: Live) -> None:
    code = "x" * (MAX_REQUEST_BYTES + 10)
    body = encode(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "run_code", "arguments": {"code": code}},
        }
    )
    headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
    headers["mcp-session-id"] = live.session_id
    answer = send("POST", live.server.url, headers, body, http=live.http)
    assert answer.status == 413
    check_answer(answer)
    ping = encode({"jsonrpc": "2.0", "id": 8, "method": "ping"})
    again = send("POST", live.server.url, headers, ping, http=live.http)
    assert again.status == 200 and _events(again.body)[0]["result"] == {}


@pytest.mark.anyio
async def test_a_real_client_is_served_after_the_fuzzing(live: Live) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        httpx.AsyncClient(headers=headers, timeout=REQUEST_TIMEOUT_S) as http,
        Client(streamable_http_client(live.server.url, http_client=http)) as client,
    ):
        result = await client.call_tool("run_python_code", {"code": "print(6 * 7)"})
    assert isinstance(result, types.CallToolResult) and text_of(result).strip() == "42"
    assert live.server.alive
    log = live.server.stderr_tail(size=10**9)
    assert TRACEBACK not in log and "internal error serving" not in log, log[-3000:]
