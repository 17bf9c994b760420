"""Limits stop the code for real: wall time, CPU time, memory (Python and JS), crashes."""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest

from sandboxes import Limits, WorkspacePaths, session_key
from sandboxes.pyodide import PyodideEngine

from .conftest import make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]

MIB = 1024 * 1024


async def test_an_endless_loop_stops_at_the_deadline_and_the_session_restarts(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    await engine.run(make_plan(workspace, "kept = 1", session=session_id))
    pid = engine.session_pid(session_key("local", session_id))
    limits = Limits(wall_timeout_s=1.0)
    began = time.monotonic()
    code = "print('started')\nwhile True: pass"
    result = await engine.run(make_plan(workspace, code, session=session_id, limits=limits))
    elapsed = time.monotonic() - began
    assert (result.status, result.exit_code, result.stdout) == ("timeout", None, "started\n")
    assert elapsed < 2.0, f"the loop ran {elapsed:.2f} s past a 1 s deadline"
    assert result.limit is not None and result.limit.startswith("wall time 1 s")
    assert pid is not None and not _alive(pid)
    after = await engine.run(make_plan(workspace, "'kept' in globals()", session=session_id))
    assert (after.status, after.value) == ("ok", "False")
    assert "restarted" in after.stderr


async def test_cpu_time_is_limited_by_the_kernel(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    if engine.jail is None or not engine.jail.cpu_rlimit:
        pytest.skip("RLIMIT_CPU cannot be set here")
    limits = Limits(wall_timeout_s=30.0, cpu_time_s=1.0)
    began = time.monotonic()
    plan = make_plan(workspace, "while True: pass", session=session_id, limits=limits)
    result = await engine.run(plan)
    assert result.status == "timeout" and time.monotonic() - began < 15.0
    assert result.limit is not None and result.limit.startswith("CPU time 1 s")


async def test_a_python_memory_bomb_is_reported_as_memory(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    limits = Limits(wall_timeout_s=30.0, memory_bytes=128 * MIB)
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))"
    result = await engine.run(make_plan(workspace, code, session=session_id, limits=limits))
    assert (result.status, result.error, result.exit_code) == (
        "memory",
        "MemoryError: the sandbox ran out of memory",
        None,
    )
    assert result.limit == f"memory {128 * MIB} bytes"
    again = await engine.run(make_plan(workspace, "'blocks' in globals()", session=session_id))
    assert (again.status, again.value, again.state) == ("ok", "False", "lost")
    assert again.state_note == f"the previous run was stopped by memory {128 * MIB} bytes"


async def test_a_js_memory_bomb_is_stopped_by_the_cgroup(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    if engine.jail is None or not engine.jail.memory_cgroup:
        pytest.skip("no writable cgroup v1 memory controller here")
    limits = Limits(wall_timeout_s=60.0, memory_bytes=128 * MIB)
    code = (
        "import pyodide.webloop as w\n"
        "g = w.scheduleCallback.constructor('return globalThis')()\n"
        "keep = g.Array.new()\n"
        "while True:\n"
        "    keep.push(g.Uint8Array.new(32 * 1024 * 1024).fill(1))\n"
    )
    result = await engine.run(make_plan(workspace, code, session=session_id, limits=limits))
    assert (result.status, result.exit_code) == ("memory", None)
    after = await engine.run(make_plan(workspace, "1 + 1", session=session_id))
    assert (after.status, after.value, after.state) == ("ok", "2", "lost")
    assert after.state_note == f"the previous run was stopped by memory {128 * MIB} bytes"


async def test_a_process_that_dies_between_calls_is_replaced(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    await engine.run(make_plan(workspace, "x = 1", session=session_id))
    pid = engine.session_pid(session_key("local", session_id))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with anyio.fail_after(10):
        while _state(pid) not in ("Z", "gone"):  # bounded: the kernel ends it in milliseconds
            await anyio.sleep(0.01)
    result = await engine.run(make_plan(workspace, "'x' in globals()", session=session_id))
    assert (result.status, result.value) == ("ok", "False")
    assert (result.state, result.state_note) == ("lost", "its process ended between calls")
    assert (
        "restarted" in result.stderr and engine.session_pid(session_key("local", session_id)) != pid
    )


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
