"""Protocol details a client meets (in-memory MCP client, real wasm engine): resource
templates listed, a missing resource and an oversized one told apart (and the workspace not
called a mount), refusals with valid JSON-RPC codes and data, an error line printed once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from runner import build_server, connection_scope
from runner._errors import ArgumentError, NotFound, RunnerError, ServerLimit, SetupError
from runner.serving import _resources
from runner.serving._server import RESOURCE_NOT_FOUND, SERVER_LIMIT, protocol_error
from sandboxes import HostIOBusy, HostIOTimeout, SandboxError, WasmEngine
from tests.conftest import service_for
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

JSON_RPC_CODES = range(-32768, -31999)
"""Codes JSON-RPC reserves for errors (pre-defined, and -32000 to -32099 for the server)."""


@pytest.fixture
async def client(wasm_engine: WasmEngine, tmp_path: Path) -> Any:
    async with (
        service_for(tmp_path / "state", wasm_engine) as service,
        Client(build_server(service)) as c,
    ):
        yield c


async def _write(client: Client, name: str, text: str) -> None:
    code = f"open({name!r}, 'w').write({text!r})"
    result = await client.call_tool("run_python_code", {"code": code})
    assert not result.is_error, text_of(result)


async def test_resource_templates_name_the_workspace(client: Client) -> None:
    listed = await client.list_resource_templates()
    assert [t.uri_template for t in listed.resource_templates] == ["file:///workspace/{+path}"]
    assert "workspace" in (listed.resource_templates[0].description or "")


async def test_a_missing_resource_is_not_found_in_the_workspace(client: Client) -> None:
    uri = "file:///workspace/nope.txt"
    with pytest.raises(MCPError) as missing:
        await client.read_resource(uri)
    assert missing.value.code == RESOURCE_NOT_FOUND
    assert missing.value.data == {"uri": uri}
    assert "does not exist" in missing.value.message
    assert "workspace" in missing.value.message and "mount" not in missing.value.message


async def test_an_oversized_resource_says_it_is_too_large(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _write(client, "big.txt", "x" * 100)
    monkeypatch.setattr(_resources, "MAX_READ_BYTES", 64)
    with pytest.raises(MCPError) as large:
        await client.read_resource("file:///workspace/big.txt")
    assert large.value.code == types.INVALID_PARAMS
    assert large.value.data == {"argument": "uri"}
    assert "at most 64 bytes" in large.value.message and "larger" in large.value.message
    assert "does not exist" not in large.value.message and "mount" not in large.value.message


async def test_a_server_limit_on_resources_list_is_a_server_error_with_its_setting(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: '1'\ndefault: allow\nserver:\n  max_sessions_per_grant: 1\n")
    async with service_for(tmp_path / "state", wasm_engine, policy) as service:
        server = build_server(service)
        with connection_scope("first"):
            async with Client(server) as first:
                await first.list_resources()
                with connection_scope("second"):
                    async with Client(server) as second:
                        with pytest.raises(MCPError) as refused:
                            await second.list_resources()
    assert refused.value.code == SERVER_LIMIT
    assert refused.value.data == {
        "setting": "server.max_sessions_per_grant",
        "limit": 1,
        "value": 2,
    }


@pytest.mark.parametrize(
    "exc",
    [
        NotFound("uri", "a file", "file:///workspace/x"),
        ArgumentError("uri", "a file:// URI", "http://x"),
        ServerLimit("max_sessions_per_grant", 1, 2, "too many"),
        SetupError("no engine"),
        HostIOBusy("busy", retry_after_s=1.0),
        HostIOTimeout("slow"),
        SandboxError("anything else"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_every_refusal_maps_to_a_json_rpc_error_code(exc: RunnerError | SandboxError) -> None:
    error = protocol_error(exc)
    assert error.code in JSON_RPC_CODES and error.message == str(exc)


@pytest.mark.parametrize(
    ("tool", "prefix"),
    [("run_python_code", "Error running python code: "), ("pyodide_execute", "Error: ")],
)
@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("x = (1,\n", "SyntaxError: '(' was never closed"),
        ("def f():\n    return 1 / 0\nf()\n", "ZeroDivisionError: division by zero"),
    ],
)
async def test_the_error_line_is_printed_once(
    client: Client, tool: str, prefix: str, code: str, error: str
) -> None:
    result = await client.call_tool(tool, {"code": code})
    text = text_of(result)
    assert result.is_error and text.startswith(prefix + error), text
    assert text.count(error) == 1, text
