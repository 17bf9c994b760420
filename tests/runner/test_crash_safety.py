"""A server killed with SIGKILL mid-run loses no counter and no acknowledged audit record."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp_types import CONNECTION_CLOSED

from policies import AuditRecord, read_audit
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
ALLOWED_BY = "/tools/run_python_code"
RUNS_RULE = "/tools/run_python_code/limits/runs"
AUDIT_WAIT_S = 30.0


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
    async with Client(_params(state, policy), read_timeout_seconds=60) as client:
        for n in range(2):
            result = await client.call_tool("run_python_code", {"code": f"print('ok {n}')"})
            assert not result.is_error and text_of(result) == f"ok {n}\n"
        slow = asyncio.ensure_future(
            client.call_tool("run_python_code", {"code": "import time; time.sleep(60)"})
        )
        server = _server_process(state)
        await _wait_until(lambda: len(_events(state, "decision")) == 3, "the third decision")
        os.kill(server.pid, signal.SIGKILL)
        with pytest.raises(MCPError) as lost:  # the in-flight call learns the server is gone
            await slow
        assert lost.value.code == CONNECTION_CLOSED
    assert not server.is_running()

    decisions, outcomes = _events(state, "decision"), _events(state, "outcome")
    assert [(r.decision, r.rule) for r in decisions] == [("allow", ALLOWED_BY)] * 3
    # the two answered runs have their outcome; the killed one has its decision only
    assert [(r.id, r.outcome, r.status) for r in outcomes] == [
        (r.id, "completed", "ok") for r in decisions[:2]
    ]

    async with Client(_params(state, policy), read_timeout_seconds=60) as client:
        fourth = await client.call_tool("run_python_code", {"code": "print('again')"})
    assert fourth.is_error  # the killed run was counted: 3 of 3 used this hour
    assert [(r.decision, r.rule) for r in _events(state, "decision")[3:]] == [("deny", RUNS_RULE)]


async def _wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll the audit file (another process writes it) until `condition` holds; bounded."""
    deadline = time.monotonic() + AUDIT_WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} was not audited within {AUDIT_WAIT_S} s"
        await anyio.sleep(0.05)


def _events(state: Path, event: str) -> list[AuditRecord]:
    path = state / "audit.jsonl"
    return [r for r in read_audit(path) if r.event == event] if path.exists() else []
