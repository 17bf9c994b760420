"""State by the plan: `persistent` keeps a session's interpreter and says how it found it
(`new`, `kept`, `lost` and why); `fresh` gives every run an interpreter no run touched."""

from __future__ import annotations

import pytest

from sandboxes import Limits, WorkspacePaths, session_key
from sandboxes._live import lost_line
from sandboxes.pyodide import PyodideEngine

from .conftest import make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]


async def test_fresh_runs_of_one_session_share_files_but_no_globals(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    code = "y = 2\nopen('note.txt', 'w').write('kept')\ny"
    first = await engine.run(make_plan(workspace, code, session=session_id, state="fresh"))
    later = "'y' in globals(), open('note.txt').read()"
    second = await engine.run(make_plan(workspace, later, session=session_id, state="fresh"))
    assert (first.status, first.value, first.state, first.state_note) == ("ok", "2", "fresh", None)
    assert (second.status, second.value) == ("ok", "(False, 'kept')")
    assert (second.state, second.state_note, second.stderr) == ("fresh", None, "")
    assert session_key("local", session_id) not in engine.sessions


async def test_a_fresh_run_stopped_by_a_limit_promises_no_restart(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    limits = Limits(wall_timeout_s=1.0)
    plan = make_plan(
        workspace, "while True: pass", session=session_id, limits=limits, state="fresh"
    )
    stopped = await engine.run(plan)
    assert (stopped.status, stopped.state, stopped.state_note) == ("timeout", "fresh", None)
    assert "sandgate: stopped: wall time 1 s\n" in stopped.stderr
    after = await engine.run(make_plan(workspace, "1 + 1", session=session_id, state="fresh"))
    assert (after.status, after.value, after.state, after.stderr) == ("ok", "2", "fresh", "")


async def test_a_persistent_session_is_new_then_kept_then_new_after_its_end(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    key = session_key("local", session_id)
    first = await engine.run(make_plan(workspace, "k = 41", session=session_id))
    second = await engine.run(make_plan(workspace, "k + 1", session=session_id))
    assert (first.state, first.state_note) == ("new", None)
    assert (second.state, second.state_note, second.value) == ("kept", None, "42")
    assert await engine.end_session(key)
    again = await engine.run(make_plan(workspace, "'k' in globals()", session=session_id))
    assert (again.state, again.state_note, again.value, again.stderr) == ("new", None, "False", "")


async def test_an_ordinary_error_keeps_the_interpreter(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    await engine.run(make_plan(workspace, "k = 1", session=session_id))
    raised = await engine.run(make_plan(workspace, "raise ValueError('no')", session=session_id))
    exited = await engine.run(make_plan(workspace, "import sys; sys.exit(3)", session=session_id))
    after = await engine.run(make_plan(workspace, "k", session=session_id))
    assert [r.status for r in (raised, exited)] == ["error", "error"]
    assert [r.state for r in (raised, exited, after)] == ["kept", "kept", "kept"]
    assert after.value == "1"


async def test_a_timeout_loses_the_state_and_the_next_run_says_why(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str
) -> None:
    await engine.run(make_plan(workspace, "k = 1", session=session_id))
    limits = Limits(wall_timeout_s=1.0)
    plan = make_plan(workspace, "while True: pass", session=session_id, limits=limits)
    stopped = await engine.run(plan)
    assert (stopped.status, stopped.state) == ("timeout", "kept")
    lost = await engine.run(make_plan(workspace, "'k' in globals()", session=session_id))
    note = "the previous run was stopped by wall time 1 s"
    assert (lost.status, lost.value, lost.state, lost.state_note) == ("ok", "False", "lost", note)
    assert lost.stderr == lost_line(note)
    assert "its globals are gone" in lost.stderr
    kept = await engine.run(make_plan(workspace, "k = 2\nk", session=session_id))
    assert (kept.state, kept.state_note, kept.value, kept.stderr) == ("kept", None, "2", "")
