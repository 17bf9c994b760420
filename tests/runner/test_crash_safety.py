"""A server killed with SIGKILL mid-run loses no counter and no acknowledged audit record."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import mcp_types as types
import psutil
import pytest
from mcp import Client, StdioServerParameters

from tests.processes import sandgate_command
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm, pytest.mark.slow]

POLICY = """
version: "1"
default: deny
tools:
  run_python_code:
    limits:
      - {counter: runs, window: hour, max: 3, scope: grant}
"""


def _params(state: Path, policy: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sandgate_command(),
        args=["serve", "--state-dir", str(state), "--policy", str(policy), "--workers", "1"],
        env=dict(os.environ),
    )


def _server_process(state: Path) -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        try:
            if "serve" in child.cmdline() and str(state) in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("the sandgate server process was not found")


async def test_sigkill_mid_run_keeps_counters_and_acknowledged_audit_records(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    state = tmp_path / "state"
    acknowledged = 0
    with pytest.raises(BaseException):  # noqa: B017 - the connection dies with the server
        async with Client(_params(state, policy), read_timeout_seconds=60) as client:
            for _ in range(2):
                result = await client.call_tool("run_python_code", {"code": "print('ok')"})
                assert isinstance(result, types.CallToolResult) and not result.is_error
                acknowledged += 1
            slow = asyncio.ensure_future(
                client.call_tool("run_python_code", {"code": "import time; time.sleep(60)"})
            )
            server = _server_process(state)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not _decisions(state, 3):
                await asyncio.sleep(0.05)
            os.kill(server.pid, signal.SIGKILL)
            await slow
    assert acknowledged == 2
    records = _records(state)
    decisions = [r for r in records if r.get("event") == "decision"]
    outcomes = [r for r in records if r.get("event") == "outcome"]
    assert len(decisions) == 3 and len(outcomes) == 2
    async with Client(_params(state, policy), read_timeout_seconds=60) as client:
        fourth = await client.call_tool("run_python_code", {"code": "print('again')"})
        assert isinstance(fourth, types.CallToolResult) and fourth.is_error
        assert "/tools/run_python_code/limits/runs" in text_of(fourth)


def _records(state: Path) -> list[dict[str, object]]:
    path = state / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _decisions(state: Path, count: int) -> bool:
    return len([r for r in _records(state) if r.get("event") == "decision"]) >= count
