"""Inputs the fuzzing found mishandled, kept as plain tests (each names the bug it pins)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from runner import Caller, Config, Service, open_service
from sandboxes import FakeEngine
from tests.results import text_of

from ._checks import assert_clean_result

pytestmark = pytest.mark.anyio

HUGE_INT = 9 * 10**400
"""A JSON number literal the wire parses to a Python int far beyond float range."""


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Service, FakeEngine]]:
    engine = FakeEngine()
    config = Config(state_dir=tmp_path / "state")
    async with open_service(config, engines={"wasm": engine, "pyodide": engine}) as started:
        yield started, engine


async def _call(service: Service, tool: str, args: Any) -> types.CallToolResult:
    result = await service.call_tool(tool, args, Caller())
    assert_clean_result(result)
    return result


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("run_code", {"code": "1", "timeout_s": HUGE_INT}),
        ("pyodide_execute", {"code": "1", "timeout": HUGE_INT}),
    ],
)
async def test_an_integer_timeout_beyond_float_range_is_clamped_not_an_internal_error(
    service: tuple[Service, FakeEngine], tool: str, args: dict[str, Any]
) -> None:
    """Was: OverflowError in float() → 'internal error' result."""
    svc, engine = service
    result = await _call(svc, tool, args)
    assert not result.is_error, text_of(result)
    (plan,) = engine.plans
    assert plan.limits.wall_timeout_s == svc.gate.policy.quotas.timeout_s  # the ceiling


async def test_a_negative_integer_timeout_beyond_float_range_names_the_argument(
    service: tuple[Service, FakeEngine],
) -> None:
    svc, engine = service
    result = await _call(svc, "run_code", {"code": "1", "timeout_s": -HUGE_INT})
    assert result.is_error and "argument 'timeout_s'" in text_of(result)
    assert engine.plans == []


async def test_a_resource_uri_with_a_nul_is_invalid_params_not_an_internal_error(
    service: tuple[Service, FakeEngine],
) -> None:
    """Was: ValueError (embedded null byte) out of resources/read → -32603 Internal error."""
    from mcp import Client
    from mcp.shared.exceptions import MCPError

    from runner import build_server

    svc, _ = service
    async with Client(build_server(svc)) as client:
        with pytest.raises(MCPError) as raised:
            await client.read_resource("file:///workspace/a%00b.txt")
    assert raised.value.error.code == types.INVALID_PARAMS
    assert "NUL" in raised.value.error.message
