"""Persistent interpreters on the container engine (runc and gVisor): a session's runs share one
live interpreter container, which says how it found the state (`new`, `kept`, `lost` and why),
while every limit stays per call; `fresh` runs are as before."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandboxes import ExecutionPlan, RunResult, StateMode, WorkspacePaths, session_key
from sandboxes._live import RECLAIMED, lost_line
from sandboxes.container import ContainerEngine, Runtime
from tests.container.conftest import Tracker, make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.container]

SMALL_MEMORY = 192 << 20
"""Every run of the memory test's session has this limit, so its container's shape stays."""
LOOK = "'k' in globals()"


def plan(
    workspace: WorkspacePaths,
    source: str,
    *,
    session: str,
    grant: str = "local",
    state: StateMode = "persistent",
    **limits: Any,
) -> ExecutionPlan:
    """A plan as the gate makes one for `run_python_code` (final expression on)."""
    made = make_plan(workspace, source, session=session, **limits)
    program = replace(made.program, final_expression=True)
    return replace(made, state=state, grant=grant, program=program)


def other_workspace(root: Path) -> WorkspacePaths:
    files, site = root / "files", root / "site"
    files.mkdir(parents=True, mode=0o700)
    site.mkdir(mode=0o700)
    return WorkspacePaths(files, site)


@pytest.fixture
async def session(engine: ContainerEngine) -> AsyncIterator[str]:
    """A session id of its own; its interpreter is ended after the test."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    yield name
    await engine.end_session(session_key("local", name))


async def run_all(engine: ContainerEngine, *plans: ExecutionPlan) -> list[RunResult]:
    return [await engine.run(p) for p in plans]


async def test_globals_persist_new_then_kept_in_one_container(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    first, second = (
        plan(workspace, "k = 41", session=session),
        plan(workspace, "k + 1", session=session),
    )
    defined, used = await run_all(engine, first, second)
    assert (defined.status, defined.state, defined.state_note) == ("ok", "new", None)
    assert (used.status, used.value, used.state, used.state_note) == ("ok", "42", "kept", None)
    assert used.stderr == ""
    assert engine.container_for(first.decision_id) == engine.container_for(second.decision_id)
    assert session_key("local", session) in engine.live_sessions()
    figures = engine.pool_stats()
    assert figures["live_sessions"] >= 1 and figures["max_live_sessions"] == 8


async def test_imports_and_objects_persist(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    code = "import json as j\nclass Box:\n    n = 0\nbox = Box()\nbox.n += 1"
    later = "box.n += 1\n(j.dumps([1]), box.n, type(box).__name__)"
    _, result = await run_all(
        engine, plan(workspace, code, session=session), plan(workspace, later, session=session)
    )
    assert (result.status, result.value, result.state) == (
        "ok",
        "('[1]', 2, 'Box')",
        "kept",
    )


async def test_sessions_and_grants_never_share_an_interpreter(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str, tmp_path: Path
) -> None:
    other = other_workspace(tmp_path / "other")
    mine = plan(workspace, "k = 'mine'", session=session)
    elsewhere = plan(other, LOOK, session=f"{session}-b")
    other_grant = plan(other, LOOK, session=session, grant="other-grant")
    again = plan(workspace, "k", session=session)
    try:
        results = await run_all(engine, mine, elsewhere, other_grant, again)
    finally:
        await engine.end_session(session_key("local", f"{session}-b"))
        await engine.end_session(session_key("other-grant", session))
    assert [(r.value, r.state) for r in results[1:]] == [
        ("False", "new"),
        ("False", "new"),
        ("'mine'", "kept"),
    ]
    containers = [engine.container_for(p.decision_id) for p in (mine, elsewhere, other_grant)]
    assert None not in containers and len(set(containers)) == 3
    assert engine.container_for(again.decision_id) == containers[0]


async def test_a_timeout_ends_the_interpreter_and_the_next_run_says_why(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    spin = plan(workspace, "while True: pass", session=session, wall_timeout_s=2.0)
    looked = plan(workspace, LOOK, session=session, wall_timeout_s=2.0)
    _, stopped, lost, kept = await run_all(
        engine,
        plan(workspace, "k = 1", session=session, wall_timeout_s=2.0),
        spin,
        looked,
        plan(workspace, "k = 2\nk", session=session, wall_timeout_s=2.0),
    )
    note = "the previous run was stopped by wall time 2 s"
    assert (stopped.status, stopped.limit, stopped.state) == ("timeout", "wall time 2 s", "kept")
    assert (lost.status, lost.value, lost.state, lost.state_note) == ("ok", "False", "lost", note)
    assert lost.stderr == lost_line(note)
    assert (kept.value, kept.state, kept.state_note, kept.stderr) == ("2", "kept", None, "")
    assert engine.container_for(looked.decision_id) != engine.container_for(spin.decision_id)


async def test_a_memory_stop_ends_the_interpreter(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    hog = "hog = []\nwhile True:\n    hog.append(b'x' * (16 << 20))\n"
    _, stopped, lost = await run_all(
        engine,
        plan(workspace, "k = 1", session=session, memory_bytes=SMALL_MEMORY),
        plan(workspace, hog, session=session, memory_bytes=SMALL_MEMORY),
        plan(workspace, LOOK, session=session, memory_bytes=SMALL_MEMORY),
    )
    note = f"the previous run was stopped by memory {SMALL_MEMORY} bytes"
    assert (stopped.status, stopped.state) == ("memory", "kept")
    assert (lost.value, lost.state, lost.state_note) == ("False", "lost", note)
    assert lost.stderr == lost_line(note)


async def test_an_output_flood_stops_the_run_and_the_next_one_says_so(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n"
    _, flooded, after = await run_all(
        engine,
        plan(workspace, "k = 1", session=session, output_bytes=64 << 10),
        plan(workspace, flood, session=session, output_bytes=64 << 10),
        plan(workspace, LOOK, session=session, output_bytes=64 << 10),
    )
    assert (flooded.status, flooded.truncated) == ("output_limit", ("stdout",))
    assert len(flooded.stdout) == 64 << 10
    note = f"the previous run was stopped by output {64 << 10} bytes per stream"
    assert (after.value, after.state, after.state_note) == ("False", "lost", note)


async def test_an_ordinary_error_or_exit_keeps_the_interpreter(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    results = await run_all(
        engine,
        plan(workspace, "k = 1", session=session),
        plan(workspace, "raise ValueError('no')", session=session),
        plan(workspace, "import sys; sys.exit(3)", session=session),
        plan(workspace, "k", session=session),
    )
    _, raised, exited, after = results
    assert (raised.status, raised.error, raised.state) == ("error", "ValueError: no", "kept")
    assert (exited.status, exited.exit_code, exited.state) == ("error", 3, "kept")
    assert (after.status, after.value, after.state) == ("ok", "1", "kept")


async def test_a_changed_limit_starts_a_new_interpreter_and_says_so(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    _, changed = await run_all(
        engine,
        plan(workspace, "k = 1", session=session),
        plan(workspace, LOOK, session=session, memory_bytes=300 << 20),
    )
    note = "the limits changed"
    assert (changed.value, changed.state, changed.state_note) == ("False", "lost", note)
    assert changed.stderr == lost_line(note)


async def test_ending_the_session_removes_its_container(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str, tracker: Tracker
) -> None:
    first = plan(workspace, "k = 1", session=session)
    await engine.run(first)
    container = engine.container_for(first.decision_id)
    assert container in tracker.leftovers(engine.instance)
    assert await engine.end_session(session_key("local", session))
    assert container not in tracker.leftovers(engine.instance)
    assert not await engine.end_session(session_key("local", session))
    again = await engine.run(plan(workspace, LOOK, session=session))
    assert (again.value, again.state, again.state_note, again.stderr) == ("False", "new", None, "")


async def test_fresh_runs_are_as_before(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    first = plan(workspace, "k = 1\nk", session=session, state="fresh")
    second = plan(workspace, LOOK, session=session, state="fresh")
    defined, looked = await run_all(engine, first, second)
    assert (defined.value, defined.state, defined.state_note) == ("1", "fresh", None)
    assert (looked.value, looked.state, looked.stderr) == ("False", "fresh", "")
    assert engine.container_for(first.decision_id) != engine.container_for(second.decision_id)
    assert session_key("local", session) not in engine.live_sessions()


async def test_the_session_folder_holds_the_files_between_runs(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    wrote = await engine.run(
        plan(workspace, "open('note.txt', 'w').write('from run 1')", session=session)
    )
    assert wrote.files_written == ("note.txt",)
    note = workspace.files / "note.txt"
    assert note.read_text() == "from run 1"  # given back: other calls see it
    note.write_text("changed between runs")
    read = await engine.run(plan(workspace, "open('note.txt').read()", session=session))
    assert (read.value, read.state) == ("'changed between runs'", "kept")
    assert sorted(p.name for p in workspace.files.iterdir()) == ["note.txt"]


@pytest.mark.parametrize("runtime", ["runc"])  # gVisor pauses it to disk: test_saved_state.py
async def test_a_full_engine_reclaims_the_idle_interpreter_and_close_leaves_nothing(
    runtime: Runtime, tracker: Tracker, tmp_path: Path
) -> None:
    engine = tracker.track(
        ContainerEngine(runtime=runtime, pool_size=1, pool_dir=tmp_path / "pool", max_sessions=1)
    )
    one, two = other_workspace(tmp_path / "one"), other_workspace(tmp_path / "two")
    async with engine:
        first = plan(one, "k = 1", session="a")
        results = await run_all(
            engine,
            first,
            plan(two, "k = 2\nk", session="b"),
            plan(one, LOOK, session="a"),
        )
        assert [r.state for r in results] == ["new", "new", "lost"]
        assert (results[2].value, results[2].state_note) == ("False", RECLAIMED)
        assert engine.container_for(first.decision_id) not in tracker.leftovers(engine.instance)
        assert engine.live_sessions() == (session_key("local", "a"),)
    assert tracker.leftovers(engine.instance) == []


async def test_cpu_time_is_counted_per_run(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    burn = "import time\nend = time.process_time() + 0.7\nwhile time.process_time() < end: pass"
    runs = await run_all(
        engine,
        *(plan(workspace, burn, session=session, cpu_time_s=1.0) for _ in range(3)),
        plan(workspace, "while True: pass", session=session, cpu_time_s=1.0),
        plan(workspace, LOOK, session=session, cpu_time_s=1.0),
    )
    assert [r.status for r in runs[:3]] == ["ok", "ok", "ok"]  # 2.1 s in all, 0.7 s each
    assert [r.state for r in runs[:4]] == ["new", "kept", "kept", "kept"]
    spun, after = runs[3], runs[4]
    assert (spun.status, spun.limit) == ("timeout", "CPU time 1 s")
    note = "the previous run was stopped by CPU time 1 s"
    assert (after.value, after.state, after.state_note) == ("False", "lost", note)


async def test_each_run_reads_its_own_stdin(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    read = "import sys\nsys.stdin.read()"
    plans = [plan(workspace, read, session=session) for _ in range(2)]
    fed = zip(plans, (b"a", b"b"), strict=True)
    plans = [replace(p, program=replace(p.program, stdin=s)) for p, s in fed]
    first, second = await run_all(engine, *plans)
    assert (first.value, second.value, second.state) == ("'a'", "'b'", "kept")


async def test_the_processes_a_run_started_end_with_it(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    start = "import subprocess\nchild = subprocess.Popen(['sleep', '300'])"
    _, after = await run_all(
        engine,
        plan(workspace, start, session=session),
        plan(workspace, "child.wait(timeout=10)", session=session),
    )
    assert (after.status, after.value, after.state) == ("ok", "-9", "kept")


BEAT = """
import threading, time
beat = open('beat.txt', 'ab', buffering=0)
def _beat():
    while True:
        beat.write(b'.')
        time.sleep(0.005)
threading.Thread(target=_beat, daemon=True).start()
time.sleep(0.05)
"""
"""A thread the program leaves running, writing to a file still open in the session folder."""


async def test_threads_left_running_are_paused_between_runs(
    engine: ContainerEngine, workspace: WorkspacePaths, session: str
) -> None:
    """Between runs the interpreter is stopped: a thread it left running neither uses CPU nor
    writes into the session folder while no run is watched; the next run continues it."""
    beat = workspace.files / "beat.txt"
    started = await engine.run(plan(workspace, BEAT, session=session))
    assert (started.status, started.state) == ("ok", "new")
    after_first = beat.stat().st_size
    assert after_first > 0
    # An observation window, not a synchronisation: a thread left running writes a byte
    # every 5 ms, so 0.3 s of writing would add dozens of bytes.
    await asyncio.sleep(0.3)
    assert beat.stat().st_size == after_first
    resumed = await engine.run(plan(workspace, "import time\ntime.sleep(0.1)", session=session))
    assert (resumed.status, resumed.state) == ("ok", "kept")
    assert beat.stat().st_size > after_first  # the same thread went on during the run
