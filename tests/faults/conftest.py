"""Shared pieces of the fault-injection tests: a server on given engines, its audit trail and
counters, bounded waits, and tracked clean-up of what a test starts (processes, mounts).

Every fault is injected into real components (a wasm worker, a Deno process, a container, a
`dockerd`, a tmpfs, a SQLite file, a `redis-server`); a test checks that the affected call
gets a clear error result, the next call works, infrastructure failures are not counted, and
the audit trail says what happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from runner import Config, Service, build_server, open_service
from sandboxes import Engine
from tests.conftest import IN_CI
from tests.processes import stop

COUNTER_KEY = "runs|grant=local"
WAIT_S = 60.0


def fault_policy(
    *, engine: str = "wasm", max_runs: int = 3, extra: str = "", state: str = "fresh"
) -> str:
    """`run_code` routed to `engine`, at most `max_runs` runs an hour for the local grant,
    each in a fresh interpreter or the session's kept one (`state`)."""
    return (
        'version: "1"\n'
        "default: deny\n"
        "quotas: {timeout_s: 60}\n"
        "tools:\n"
        "  run_code:\n"
        f"    engine: {engine}\n"
        f"    state: {state}\n"
        "    limits:\n"
        f"      - {{counter: runs, window: hour, max: {max_runs}, scope: grant}}\n" + extra
    )


@dataclass
class Stack:
    """A server on real engines, with an in-memory MCP client, and where its records are."""

    service: Service
    client: Client
    state: Path
    audit_path: Path
    db_path: Path

    async def run(self, code: str, **arguments: Any) -> types.CallToolResult:
        async with asyncio.timeout(WAIT_S * 3):
            result = await self.client.call_tool("run_code", {"code": code, **arguments})
        assert isinstance(result, types.CallToolResult)
        return result

    def records(self) -> list[dict[str, Any]]:
        return audit_records(self.audit_path)

    def units(self, key: str = COUNTER_KEY) -> int:
        return counted(self.db_path, key)

    def pending_decision(self) -> str | None:
        """The id of an allowed decision whose outcome is not recorded yet."""
        records = self.records()
        done = {r["id"] for r in records if r.get("event") == "outcome"}
        for record in records:
            if record.get("decision") == "allow" and record["id"] not in done:
                return str(record["id"])
        return None

    def outcome_of(self, decision_id: str) -> dict[str, Any]:
        (found,) = [
            r for r in self.records() if r.get("event") == "outcome" and r["id"] == decision_id
        ]
        return found


def audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def counted(db_path: Path, key: str = COUNTER_KEY) -> int:
    """Units the SQLite store holds for `key` (read by a separate connection)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM counter_log WHERE key = ?", (key,)
        ).fetchone()
    return int(row[0])


@asynccontextmanager
async def stack(
    folder: Path,
    policy_text: str,
    engines: dict[str, Engine],
    *,
    state_dir: Path | None = None,
    audit_path: Path | None = None,
    db_path: Path | None = None,
) -> AsyncIterator[Stack]:
    """A server with `policy_text` over `engines` (ready ones, not closed here)."""
    policy = folder / "policy.yaml"
    policy.write_text(policy_text)
    state = state_dir or folder / "state"
    config = Config(
        policy_path=policy, state_dir=state, tool_sets=("native",), progress=lambda _: None
    )
    async with (
        open_service(config, engines=engines) as service,
        Client(build_server(service)) as client,
    ):
        yield Stack(
            service,
            client,
            state,
            audit_path or state / "audit.jsonl",
            db_path or state / "state.sqlite3",
        )


async def wait_until(
    check: Callable[[], Any], what: str, *, timeout_s: float = WAIT_S, every_s: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if isinstance(found, Awaitable):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)


def require(condition: bool, why: str) -> None:
    """Skip (outside CI) or fail (in CI) when the machine cannot run a fault test."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


@dataclass
class Tracked:
    """Processes and mounts a test made; `cleanup` ends and removes them whatever happened."""

    processes: list[subprocess.Popen[bytes]]
    mounts: list[Path]

    def process(self, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.processes.append(process)
        return process

    def mount(self, point: Path) -> Path:
        self.mounts.append(point)
        return point

    def cleanup(self) -> list[str]:
        problems = []
        for process in reversed(self.processes):
            stop(process)
        for point in reversed(self.mounts):
            if _mounted(point):
                done = subprocess.run(["umount", str(point)], capture_output=True, check=False)
                if done.returncode:
                    subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
                if _mounted(point):
                    problems.append(f"could not unmount {point}")
        return problems


def _mounted(point: Path) -> bool:
    target = os.path.realpath(point)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


@pytest.fixture
def tracked() -> Iterator[Tracked]:
    made = Tracked([], [])
    try:
        yield made
    finally:
        problems = made.cleanup()
        assert not problems, problems
