"""`require_approval` end to end over MCP: MCP elicitation, and `sandgate approve` out of band."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from runner import build_server, main
from sandboxes import WasmEngine
from tests.conftest import service_for
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

POLICY = """
version: "1"
default: deny
tools:
  run_python_code:
    action: require_approval
    reason: a human reviews every run
"""
CALL = {"code": "print('approved run')"}


def _answering(approve: bool, asked: list[str]) -> Any:
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": approve})

    return callback


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "approval.yaml"
    path.write_text(POLICY)
    return path


async def test_an_approving_human_asked_by_elicitation_lets_the_call_run(
    wasm_engine: WasmEngine, tmp_path: Path, policy: Path
) -> None:
    asked: list[str] = []
    async with (
        service_for(tmp_path / "state", wasm_engine, policy) as service,
        Client(build_server(service), elicitation_callback=_answering(True, asked)) as client,
    ):
        result = await client.call_tool("run_python_code", CALL)
    assert isinstance(result, types.CallToolResult)
    assert not result.is_error and text_of(result).strip() == "approved run"
    assert len(asked) == 1 and "a human reviews every run" in asked[0]


async def test_a_refusing_human_denies_the_call(
    wasm_engine: WasmEngine, tmp_path: Path, policy: Path
) -> None:
    asked: list[str] = []
    async with (
        service_for(tmp_path / "state", wasm_engine, policy) as service,
        Client(build_server(service), elicitation_callback=_answering(False, asked)) as client,
    ):
        result = await client.call_tool("run_python_code", CALL)
    assert isinstance(result, types.CallToolResult) and result.is_error
    assert "approved run" not in text_of(result) and len(asked) == 1


async def test_without_elicitation_an_operator_approves_with_the_cli_once(
    wasm_engine: WasmEngine, tmp_path: Path, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    async with (
        service_for(state, wasm_engine, policy) as service,
        Client(build_server(service)) as client,
    ):
        first = await client.call_tool("run_python_code", CALL)
        assert isinstance(first, types.CallToolResult) and first.is_error
        found = re.search(r"sandgate approve (\S+?)`", text_of(first))
        assert found, text_of(first)
        assert main(["approve", found.group(1), "--state-dir", str(state)]) == 0
        second = await client.call_tool("run_python_code", CALL)
        assert isinstance(second, types.CallToolResult) and not second.is_error
        assert text_of(second).strip() == "approved run"
        third = await client.call_tool("run_python_code", CALL)
        assert isinstance(third, types.CallToolResult) and third.is_error
        other = await client.call_tool("run_python_code", {"code": "print('other')"})
        assert isinstance(other, types.CallToolResult) and other.is_error
