"""A cluster's front end refuses a call over a grant's cap exactly as a single server does:
the same result (rule, text, structured shape), a wrong call named first.

The single server here is a real `Service` (real gate, audit, workspaces) over a fake engine:
nothing here is about running code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from runner import Caller, Config, Service, open_service
from runner._service import served_tool_names
from runner.cluster._caps import forks_over_cap, refusal, sessions_over_cap
from runner.tools import ToolSet
from sandboxes import FakeEngine

pytestmark = pytest.mark.anyio

CAP = 2
TOOL_SETS: tuple[ToolSet, ...] = ("python-code-runner", "native")


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    """A single server whose grants may hold `CAP` sessions."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\ntools:\n  run_code: {}\n  run_python_code: {}\n"
        f"server: {{max_sessions_per_grant: {CAP}}}\n"
    )
    config = Config(policy_path=policy, state_dir=tmp_path / "state", tool_sets=TOOL_SETS)
    async with open_service(config, engines={"wasm": FakeEngine()}) as opened:
        yield opened


def front_end(
    service: Service, name: str, arguments: dict[str, Any], caller: Caller
) -> tuple[str, types.CallToolResult]:
    """What a front end answers when the grant holds `CAP` sessions in the cluster."""
    names = served_tool_names(TOOL_SETS)
    _call, outcome, result = refusal(
        service.gate,
        names,
        service.tool_names(),
        name,
        arguments,
        caller,
        sessions_over_cap(service.gate, CAP),
    )
    return outcome.rule, result


@pytest.mark.parametrize(
    ("name", "arguments", "rule"),
    [
        ("run_code", {"code": "1", "session": "three"}, "/server/max_sessions_per_grant"),
        ("run_python_code", {"code": "1"}, "/server/max_sessions_per_grant"),
        ("run_code", {"code": 1, "session": "three"}, "/arguments/code"),
        ("no_such_tool", {}, "/tools"),
    ],
)
async def test_a_call_over_the_cap_is_answered_as_a_single_server_answers_it(
    service: Service, name: str, arguments: dict[str, Any], rule: str
) -> None:
    alice = Caller(grant="alice", session="a1")
    for held in ("one", "two"):
        ok = await service.call_tool("run_code", {"code": "1", "session": held}, alice)
        assert not ok.is_error
    single = await service.call_tool(name, arguments, Caller(grant="alice", session="new"))
    refused_rule, cluster = front_end(
        service, name, arguments, Caller(grant="alice", session="new")
    )
    assert refused_rule == rule
    assert cluster == single


async def test_forks_are_refused_past_the_cap_counted_over_the_cluster(service: Service) -> None:
    assert forks_over_cap(service.gate, {"snapshot_id": "s", "count": 1}, CAP - 1) is None
    over = forks_over_cap(service.gate, {"snapshot_id": "s", "count": 2}, CAP - 1)
    assert over is not None and (over.rule, over.limit, over.value) == (
        "/server/max_sessions_per_grant",
        CAP,
        CAP + 1,
    )
    assert forks_over_cap(service.gate, {"snapshot_id": "s", "count": 0}, CAP) is None, (
        "a wrong count is the node's to name"
    )
