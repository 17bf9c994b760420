"""The same event ends the same way on every engine: the same status, the same `limit` text
and the same exit code on wasm, Pyodide, runc and gVisor (runsc), all judged by
`sandboxes.judge` with its one precedence."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from sandboxes import (
    ExecutionPlan,
    Limits,
    Program,
    RunResult,
    WorkspacePaths,
    limit_named,
    limit_text,
    session_key,
)
from tests.sandboxes.conftest import Target

pytestmark = pytest.mark.anyio

LIMITS = Limits(
    wall_timeout_s=4.0,
    memory_bytes=192 << 20,
    output_bytes=10_000,
    workspace_bytes=1 << 20,
    workspace_files=1_000,
)

INFINITE_LOOP = "while True:\n    pass\n"
MEMORY_HOG = "hog = []\nwhile True:\n    hog.append(bytearray(16 << 20))\n"
PRINT_FLOOD = "while True:\n    print('x' * 1000)\n"
FLOOD_THEN_MEMORY = f"print('y' * 30_000, flush=True)\n{MEMORY_HOG}"
WORKSPACE_OVERRUN = (
    "for n in range(64):\n"  # 4 MiB in files of 64 KiB, each under any per-file cap
    "    with open(f'part{n:02d}.bin', 'wb') as f:\n"
    "        f.write(b'z' * (64 << 10))\n"
)


class Run(Protocol):
    async def __call__(self, source: str) -> RunResult: ...


@pytest.fixture
async def run(target: Target, workspace: WorkspacePaths) -> AsyncIterator[Run]:
    """Runs code under `LIMITS` in this test's own session on the engine under test."""
    session = f"same-status-{secrets.token_hex(4)}"

    async def run_code(source: str) -> RunResult:
        plan = ExecutionPlan(
            decision_id=f"same-status-{secrets.token_hex(4)}",
            engine=target.kind,
            program=Program("code", source),
            limits=LIMITS,
            workspace=workspace,
            session_id=session,
            runtime=target.runtime,
        )
        return await target.engine.run(plan)

    yield run_code
    await target.engine.end_session(session_key("local", session))


async def test_an_infinite_loop_times_out_on_wall_time(run: Run) -> None:
    result = await run(INFINITE_LOOP)
    assert (result.status, result.limit, result.exit_code) == (
        "timeout",
        "wall time 4 s",
        None,
    ), result.stderr


async def test_a_memory_hog_is_stopped_for_memory(run: Run) -> None:
    result = await run(MEMORY_HOG)
    assert (result.status, result.limit) == ("memory", f"memory {192 << 20} bytes"), result.stderr
    assert result.error is not None and result.error.startswith("MemoryError")


async def test_a_print_flood_is_stopped_by_the_output_limit(run: Run) -> None:
    result = await run(PRINT_FLOOD)
    assert (result.status, result.limit) == ("output_limit", "output 10000 bytes per stream")
    assert result.truncated == ("stdout",)
    assert result.stdout == (("x" * 1000 + "\n") * 10)[:10_000]  # the cap's worth, no more


async def test_a_flood_that_then_runs_out_of_memory_is_the_flood(run: Run) -> None:
    result = await run(FLOOD_THEN_MEMORY)
    assert (result.status, limit_named(result.limit)) == ("output_limit", "output"), result.stderr
    assert result.limit == limit_text("output", LIMITS)
    assert result.stdout == "y" * 10_000


async def test_a_workspace_overrun_is_killed_with_the_workspace_limit(
    run: Run, workspace: WorkspacePaths
) -> None:
    result = await run(WORKSPACE_OVERRUN)
    assert (result.status, result.limit) == (
        "killed",
        "workspace 1048576 bytes of disk and 1000 files",
    ), result.stderr
    assert "sandgate: stopped: workspace 1048576 bytes" in result.stderr


async def test_an_exception_is_an_error_with_its_line(run: Run) -> None:
    result = await run("raise ValueError('boom')")
    assert (result.status, result.limit, result.exit_code) == ("error", None, 1)
    assert result.error == "ValueError: boom"


async def test_a_non_zero_exit_is_an_error_with_its_code(run: Run) -> None:
    result = await run("import sys\nprint('leaving')\nsys.exit(3)")
    assert (result.status, result.limit, result.exit_code) == ("error", None, 3)
    assert (result.stdout, result.truncated) == ("leaving\n", ())


async def test_a_good_run_is_ok_with_no_limit_and_no_notice(run: Run) -> None:
    result = await run("print('fine')")
    assert (result.status, result.limit, result.error, result.exit_code) == ("ok", None, None, 0)
    assert (result.stdout, result.stderr) == ("fine\n", "")
