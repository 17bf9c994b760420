"""The server protects itself: request size, sessions per grant, total workspace disk, idling.

The settings live in the policy's `server:` section; the engine is a fake (nothing here is about
running code), the gate, audit, counters and workspaces are real.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from policies import ServerSettings, load_policy_text, policy_json_schema
from runner import Caller, Config, ServerLimit, Service, open_service
from runner._sessions import Sessions
from sandboxes import FakeEngine, disk_usage
from tests.clock import FakeClock
from tests.results import text_of

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


def _policy(tmp_path: Path, server: str, *, limits: str = "") -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: '1'\ndefault: deny\n"
        "tools:\n"
        f"  run_code: {{{limits}}}\n"
        f"  run_python_code: {{{limits}}}\n"
        f"server: {server}\n"
    )
    return path


@asynccontextmanager
async def _service(
    tmp_path: Path, server: str, *, clock: FakeClock | None = None, limits: str = ""
) -> AsyncIterator[tuple[Service, FakeEngine]]:
    engine = FakeEngine()
    config = Config(
        policy_path=_policy(tmp_path, server, limits=limits),
        state_dir=tmp_path / "state",
        tool_sets=("python-code-runner", "native"),
        clock=clock or time.time,
    )
    async with open_service(config, engines={"wasm": engine}) as service:
        yield service, engine


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the settings ------------------------------------------------------------------------------


def test_the_server_section_has_safe_defaults_with_units() -> None:
    settings = load_policy_text("version: '1'").server
    assert settings == ServerSettings()
    assert settings.max_request_bytes == 4 * MIB
    assert settings.max_sessions_per_grant == 64
    assert settings.max_workspace_bytes_total == 4 * 1024 * MIB
    assert settings.session_idle_s == 3600.0
    described = policy_json_schema()["$defs"]["ServerSettings"]["properties"]
    for name, unit in (
        ("max_request_bytes", "bytes"),
        ("max_workspace_bytes_total", "Bytes"),
        ("session_idle_s", "Seconds"),
    ):
        assert unit in described[name]["description"], name
        assert "Default" in described[name]["description"], name


@pytest.mark.parametrize(
    "text",
    [
        "server: {max_request_bytes: 0}",
        "server: {max_sessions_per_grant: -1}",
        "server: {session_idle_s: 0}",
        "server: {max_workspace_bytes: 10}",
        "server: {max_request_bytes: '4MB'}",
    ],
)
def test_a_wrong_server_setting_is_a_load_error(text: str) -> None:
    from policies import PolicyLoadError

    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text(text)
    assert any(p.path.startswith("server") for p in raised.value.problems)


# -- request size ------------------------------------------------------------------------------


async def test_arguments_over_max_request_bytes_are_refused_before_the_policy(
    tmp_path: Path,
) -> None:
    limits = "limits: [{counter: runs, window: hour, max: 1, scope: grant}]"
    async with _service(tmp_path, "{max_request_bytes: 4096}", limits=limits) as (service, engine):
        big = await service.call_tool("run_code", {"code": "x" * 5000}, Caller())
        assert big.is_error and "server.max_request_bytes" in text_of(big)
        many = await service.call_tool(
            "run_code", {"code": "1", "files": {f"f{i}.py": "" for i in range(2000)}}, Caller()
        )
        assert many.is_error and "server.max_request_bytes" in text_of(many)
        assert engine.plans == []
        fits = await service.call_tool("run_code", {"code": "x" * 3000}, Caller())
        assert not fits.is_error, text_of(fits)  # the refusals consumed no counter
    refusals = [r for r in _audit(tmp_path) if r["decision"] == "deny"]
    assert [r["rule"] for r in refusals] == ["/server/max_request_bytes"] * 2
    assert refusals[0]["arg_keys"] == ["code"]


async def test_arguments_nested_too_deeply_are_an_argument_error(tmp_path: Path) -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    async with _service(tmp_path, "{}") as (service, engine):
        result = await service.call_tool("run_code", {"code": "1", "extra": deep}, Caller())
    assert result.is_error and "argument 'extra'" in text_of(result)
    assert "nested" in text_of(result) and engine.plans == []


# -- sessions per grant ------------------------------------------------------------------------


async def test_a_grant_cannot_hold_more_sessions_than_allowed(tmp_path: Path) -> None:
    async with _service(tmp_path, "{max_sessions_per_grant: 2}") as (service, engine):
        alice, bob = Caller(grant="alice", session="a1"), Caller(grant="bob", session="b1")
        for name in ("one", "two"):
            ok = await service.call_tool("run_code", {"code": "1", "session": name}, alice)
            assert not ok.is_error, text_of(ok)
        third = await service.call_tool("run_code", {"code": "1", "session": "three"}, alice)
        assert third.is_error and "server.max_sessions_per_grant = 2" in text_of(third)
        again = await service.call_tool("run_code", {"code": "1", "session": "one"}, alice)
        assert not again.is_error  # an existing session goes on
        other = await service.call_tool("run_code", {"code": "1"}, bob)
        assert not other.is_error  # other grants are not affected
        assert len(engine.plans) == 4
        service.sessions.end("alice", "named:two")
        freed = await service.call_tool("run_code", {"code": "1", "session": "three"}, alice)
        assert not freed.is_error
    denied = [r for r in _audit(tmp_path) if r["decision"] == "deny"]
    assert [(r["rule"], r["grant"]) for r in denied] == [
        ("/server/max_sessions_per_grant", "alice")
    ]


# -- total workspace disk ----------------------------------------------------------------------


async def test_no_new_session_while_the_workspaces_use_more_than_the_total(tmp_path: Path) -> None:
    async with _service(tmp_path, "{max_workspace_bytes_total: 10000}") as (service, _):
        first = Caller(session="first")
        big = await service.call_tool(
            "run_code", {"code": "1", "files": {"data.txt": "x" * 20000}}, first
        )
        assert not big.is_error
        refused = await service.call_tool("run_code", {"code": "1"}, Caller(session="second"))
        assert refused.is_error and "server.max_workspace_bytes_total" in text_of(refused)
        same = await service.call_tool("run_code", {"code": "1"}, first)
        assert not same.is_error  # the session that holds the bytes goes on
        service.sessions.end("local", "first")
        room = await service.call_tool("run_code", {"code": "1"}, Caller(session="second"))
        assert not room.is_error
    rules = [r["rule"] for r in _audit(tmp_path) if r["decision"] == "deny"]
    assert rules == ["/server/max_workspace_bytes_total"]


def test_workspace_disk_use_counts_allocated_blocks_and_does_not_follow_links(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 100)
    (tmp_path / "g").write_bytes(b"y" * 11)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"z" * 100_000)
    try:
        (tmp_path / "link").symlink_to(outside)
        entries = ("a", "a/f", "g", "link")
        allocated = sum(os.lstat(tmp_path / e).st_blocks * 512 for e in entries)
        assert disk_usage(tmp_path).bytes == allocated
        assert allocated < 100_000  # the link's target is not counted
        assert disk_usage(tmp_path / "missing").bytes == 0
    finally:
        outside.unlink()


# -- idle sessions -----------------------------------------------------------------------------


def test_reap_idle_removes_idle_sessions_but_not_busy_ones(tmp_path: Path) -> None:
    clock = FakeClock()
    sessions = Sessions(tmp_path / "ws", idle_s=60.0, clock=clock)
    idle = sessions.get("g", "idle")
    with sessions.hold():
        busy = sessions.get("g", "busy")
        clock.advance(61)
        assert sessions.reap_idle() == [idle.key]
        assert not idle.workspace.files.exists() and busy.workspace.files.exists()
    clock.advance(59)
    assert sessions.reap_idle() == []  # the hold ended 59 s ago: it counts as just used
    clock.advance(2)
    assert sessions.reap_idle() == [busy.key] and len(sessions) == 0
    assert not busy.workspace.files.exists()


def test_the_idle_time_and_limits_follow_the_settings_given(tmp_path: Path) -> None:
    current = ServerSettings(session_idle_s=10, max_sessions_per_grant=1)
    sessions = Sessions(tmp_path / "ws", settings=lambda: current)
    assert sessions.idle_s == 10
    sessions.get("g", "a")
    with pytest.raises(ServerLimit) as raised:
        sessions.get("g", "b")
    assert (raised.value.setting, raised.value.limit, raised.value.value) == (
        "max_sessions_per_grant",
        1,
        2,
    )
    assert raised.value.rule == "/server/max_sessions_per_grant"
    current = ServerSettings(session_idle_s=20, max_sessions_per_grant=2)
    assert sessions.idle_s == 20 and sessions.get("g", "b").id == "b"


async def test_the_server_reaps_idle_sessions_on_its_own(tmp_path: Path) -> None:
    clock = FakeClock()
    async with _service(tmp_path, "{session_idle_s: 0.4}", clock=clock) as (service, _):
        await service.call_tool("run_code", {"code": "1", "files": {"a.txt": "kept"}}, Caller())
        (session,) = service.sessions._sessions.values()
        files = session.workspace.files
        assert (files / "a.txt").read_text() == "kept"
        assert files.exists() and len(service.sessions) == 1
        clock.advance(1.0)
        async with asyncio.timeout(10):
            while len(service.sessions) or files.exists():
                await asyncio.sleep(0.02)
        again = await service.call_tool("run_code", {"code": "1"}, Caller())
        assert not again.is_error and len(service.sessions) == 1
