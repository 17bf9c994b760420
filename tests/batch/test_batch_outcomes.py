"""Batch and MCP read the same typed outcome of a call: the gate's `retry_after_s` reaches a
batch (which waits exactly that long) and an MCP client (in `run_code`'s structured content).

Real gate, counters, audit and wasm engine; the policy allows one run per window per grant.
"""

from __future__ import annotations

import time
from pathlib import Path

import mcp_types as types
import pytest

from runner import Caller, Config, Job, open_service
from runner.batch._execute import JobExecutor, retry_after
from runner.tools import Ran, Refused
from sandboxes import WasmEngine

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

WINDOW_S = 2.5


def _policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        'version: "1"\ndefault: deny\ntools:\n  run_code:\n    limits:\n'
        f"      - {{counter: runs, window: PT{WINDOW_S}S, max: 1, scope: grant}}\n"
    )
    return path


def _config(tmp_path: Path) -> Config:
    return Config(
        policy_path=_policy(tmp_path), state_dir=tmp_path / "state", tool_sets=("native",)
    )


async def test_a_rate_limit_refusal_carries_its_hint_to_batch_and_to_mcp(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    async with open_service(_config(tmp_path), engines={"wasm": wasm_engine}) as service:
        caller = Caller(grant="batch", session="one")
        first = await service.outcome("run_code", {"code": "print(1)"}, caller)
        assert isinstance(first, Ran) and first.result.status == "ok"
        refused = await service.outcome("run_code", {"code": "print(2)"}, caller)
        assert isinstance(refused, Refused)
        assert refused.rule == "/tools/run_code/limits/runs"
        assert refused.retry_after_s is not None and 0 < refused.retry_after_s <= WINDOW_S
        assert retry_after(refused) == max(refused.retry_after_s, 0.1)
        answer = await service.call_tool("run_code", {"code": "print(3)"}, caller)
        assert isinstance(answer, types.CallToolResult) and answer.is_error
        payload = answer.structured_content
        assert payload is not None and payload["status"] == "denied"
        assert 0 < payload["retry_after_s"] <= WINDOW_S


async def test_a_rate_limited_job_waits_the_hinted_time_and_then_runs(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    # Allowed to wait one window in all: enough when it waits what the gate says, not when it
    # polls every second (1 + 1 + 1 s > one window, and the third poll comes too late).
    async with open_service(_config(tmp_path), engines={"wasm": wasm_engine}) as service:
        executor = JobExecutor(service, max_rate_wait_s=WINDOW_S)
        first = await executor.run(Job("a", "print('a')"))
        began = time.monotonic()
        second = await executor.run(Job("b", "print('b')"))
        waited = time.monotonic() - began
    assert (first.status, second.status) == ("ok", "ok")
    assert second.stdout == "b\n"
    assert waited >= WINDOW_S - 1.0  # it waited for the window, not a fixed second
    assert executor.runs == 2
