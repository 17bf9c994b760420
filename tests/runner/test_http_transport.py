"""`sandgate serve --transport streamable-http`: the same tools over HTTP, bearer-token grants."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import mcp_types as types
import pytest
from mcp import Client

from tests.processes import serving_http
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm, pytest.mark.slow]

TOKEN = "test-token-for-grant-alice"
START_TIMEOUT_S = 120.0


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        f"grants:\n  alice: {{token_sha256: '{digest}'}}\n"
        "tools:\n  run_python_code: {}\n  save_to_file_and_run: {}\n  run_python_file: {}\n"
    )
    state = tmp_path / "state"
    with serving_http(policy, state, workers=2, start_timeout_s=START_TIMEOUT_S) as (url, _):
        yield url


async def test_a_call_without_a_token_gets_401(http_server: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(http_server, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert response.status_code == 401
        wrong = await http.post(
            http_server,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": "Bearer not-the-token"},
        )
        assert wrong.status_code == 401


async def test_the_401_says_why_and_points_at_no_oauth_metadata(http_server: str) -> None:
    """An OAuth-aware client (the MCP Inspector) starts an OAuth login when the 401 names
    `resource_metadata`; static tokens have none, so the client shows the server's reason."""
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with httpx.AsyncClient() as http:
        missing = await http.post(http_server, json=ping)
        wrong = await http.post(http_server, json=ping, headers={"Authorization": "Bearer nope"})
    for response in (missing, wrong):
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="sandgate"'), challenge
        assert "resource_metadata" not in challenge, challenge
    assert "Authorization: Bearer" in missing.json()["detail"]
    assert wrong.json()["detail"] == "unknown bearer token"
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource", "/.well-known/oauth-authorization-server"]
)
async def test_oauth_discovery_is_not_found_with_or_without_a_token(
    http_server: str, path: str
) -> None:
    url = http_server.removesuffix("/mcp") + path
    async with httpx.AsyncClient() as http:
        anonymous = await http.get(url)
        known = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (anonymous.status_code, known.status_code) == (404, 404)
    assert "static bearer tokens" in anonymous.json()["detail"]


async def test_the_tools_run_over_http_for_a_known_grant(http_server: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        from mcp.client.streamable_http import streamable_http_client

        async with Client(streamable_http_client(http_server, http_client=http)) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "run_python_code" in names
            result = await client.call_tool("run_python_code", {"code": "print(1+1)"})
            assert isinstance(result, types.CallToolResult) and text_of(result).strip() == "2"
            saved = await client.call_tool(
                "save_to_file_and_run",
                {"file_name": "k.py", "code": "k = 'kept'", "variable_to_return": "k"},
            )
            assert isinstance(saved, types.CallToolResult) and text_of(saved) == "kept"
            again = await client.call_tool(
                "run_python_file", {"file_name": "k.py", "variable_to_return": "k"}
            )
            assert isinstance(again, types.CallToolResult) and text_of(again) == "kept"


async def test_metrics_count_calls_by_tool_decision_and_status(http_server: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        from mcp.client.streamable_http import streamable_http_client

        async with Client(streamable_http_client(http_server, http_client=http)) as client:
            await client.call_tool("run_python_code", {"code": "print(1)"})
            await client.call_tool("pip_install_package", {"package_name": "six"})
        response = await http.get(http_server.replace("/mcp", "/metrics"))
    assert response.status_code == 200
    text = response.text
    assert 'sandgate_calls_total{decision="allow",status="ok",tool="run_python_code"} 1.0' in text
    assert 'decision="deny",status="none",tool="pip_install_package"' in text
    assert "sandgate_call_seconds_bucket" in text and "sandgate_gate_seconds_bucket" in text
    assert 'sandgate_pool{engine="wasm",what="workers"}' in text
