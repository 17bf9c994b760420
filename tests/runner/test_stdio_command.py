"""The installed `sandgate serve` command over stdio, driven by the SDK's stdio client."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from policies import default_policy_path
from tests.processes import sandgate_command
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm, pytest.mark.slow]

SEED_POLICY = (
    '{"version":"1","default":"deny","tools":{"pip_install_package":{"limits":'
    '[{"counter":"pip_install_package_rate","window":"minute","max":10,"scope":"grant"}]}}}'
)


@asynccontextmanager
async def _serve(state_dir: Path, *extra: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sandgate_command(),
        args=["serve", "--state-dir", str(state_dir), "--workers", "2", *extra],
        env={k: v for k, v in os.environ.items() if k != "SANDGATE_TEST_SECRET"},
    )
    async with Client(params, read_timeout_seconds=120) as client:
        yield client


async def test_the_command_serves_the_upstream_tools_and_runs_code(tmp_path: Path) -> None:
    async with _serve(tmp_path / "state") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"run_python_code", "save_to_file_and_run", "pip_install_package"} <= names
        assert "run_python_file" in names
        result = await client.call_tool("run_python_code", {"code": "print(1+1)"})
        assert isinstance(result, types.CallToolResult)
        assert text_of(result).strip() == "2"
        saved = await client.call_tool(
            "save_to_file_and_run",
            {"file_name": "calc.py", "code": "a=5\nb=15\nc=a*b", "variable_to_return": "c"},
        )
        assert isinstance(saved, types.CallToolResult) and text_of(saved) == "75"
        again = await client.call_tool("run_python_file", {"file_name": "calc.py"})
        assert isinstance(again, types.CallToolResult) and not again.is_error


async def test_the_policylayer_seed_policy_behaves_as_written_across_restarts(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "seed.json"
    policy.write_text(SEED_POLICY)
    state = tmp_path / "state"
    install = {"package_name": "six"}
    async with _serve(state, "--policy", str(policy)) as client:
        denied = await client.call_tool("run_python_code", {"code": "print(1)"})
        assert isinstance(denied, types.CallToolResult) and denied.is_error
        assert "/default" in text_of(denied)
        for _ in range(6):
            allowed = await client.call_tool("pip_install_package", install)
            assert isinstance(allowed, types.CallToolResult)
            assert "pip_install_package_rate" not in text_of(allowed)
    async with _serve(state, "--policy", str(policy)) as client:
        for _ in range(4):
            allowed = await client.call_tool("pip_install_package", install)
            assert isinstance(allowed, types.CallToolResult)
            assert "pip_install_package_rate" not in text_of(allowed)
        eleventh = await client.call_tool("pip_install_package", install)
        assert isinstance(eleventh, types.CallToolResult) and eleventh.is_error
        assert "pip_install_package_rate" in text_of(eleventh)


async def test_the_default_policy_is_the_shipped_file() -> None:
    assert default_policy_path().name == "default.yaml" and default_policy_path().is_file()


async def _answer_on_stdio(state_dir: Path, *lines: dict[str, object]) -> list[dict[str, object]]:
    """Start `sandgate serve` on stdio, write `lines` as raw JSON-RPC, read one answer per
    request among them; the process is ended after, whatever happened."""
    process = await asyncio.create_subprocess_exec(
        sandgate_command(),
        "serve",
        "--state-dir",
        str(state_dir),
        "--workers",
        "1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        for line in lines:
            process.stdin.write(json.dumps(line).encode() + b"\n")
        await process.stdin.drain()
        answers = []
        async with asyncio.timeout(120):
            for _ in [line for line in lines if "id" in line]:
                answers.append(json.loads(await process.stdout.readline()))
        return answers
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_a_request_before_initialize_is_told_to_initialize_first(tmp_path: Path) -> None:
    early = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    [answer] = await _answer_on_stdio(tmp_path / "state", early)
    assert answer["id"] == 1
    error = answer["error"]
    assert isinstance(error, dict)
    assert error["code"] == types.INVALID_REQUEST
    assert error["data"] == {"method": "tools/list", "expected": "initialize"}
    assert "before 'initialize'" in str(error["message"])
