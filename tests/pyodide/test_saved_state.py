"""Saved interpreters on the pyodide engine: a session's live interpreter saved into a folder
(a Pyodide memory snapshot and its own files) and resumed in new Deno processes: snapshots,
forks, sessions paused to disk."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxes import Limits, StateImageRefused, WorkspacePaths, session_key
from sandboxes.pyodide import PyodideEngine
from sandboxes.pyodide._saved import HEAP, MANIFEST, SaveRefused

from .conftest import make_plan
from .test_escape import GLOBAL_THIS

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]

SETUP = """
import json, sys
class Counter:
    def __init__(self, start):
        self.n = start
    def bump(self):
        self.n += 1
        return self.n
def double(v):
    return 2 * v
counter = Counter(10)
x = 41
import statistics
import os
os.makedirs('/tmp/own', exist_ok=True)
open('/tmp/own/note.txt', 'w').write('made in the interpreter')
sys.path.append('/tmp/own')
path_then = list(sys.path)
open('/tmp/own/ownmod.py', 'w').write('VALUE = 7\\n')
"""


def key(sid: str) -> str:
    return session_key("local", sid)


@pytest.fixture(scope="module")
async def saved(
    engine: PyodideEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Path]:
    """A folder holding a Pyodide interpreter in which `SETUP` ran (and stays live)."""
    root = tmp_path_factory.mktemp("saved")
    workspace = WorkspacePaths(root / "files", root / "site")
    workspace.files.mkdir()
    workspace.site.mkdir()
    origin = f"origin-{secrets.token_hex(4)}"
    ran = await engine.run(make_plan(workspace, SETUP, session=origin))
    assert (ran.status, ran.state, ran.stderr) == ("ok", "new", "")
    folder = root / "image"
    folder.mkdir()
    assert await engine.save_state(key(origin), folder)
    yield folder
    await engine.end_session(key(origin))


async def test_a_saved_interpreter_loaded_into_another_session_keeps_its_globals(
    engine: PyodideEngine, saved: Path, workspace: WorkspacePaths, session_id: str
) -> None:
    await engine.load_state(key(session_id), "local", saved)
    ran = await engine.run(make_plan(workspace, "x + 1", session=session_id))
    assert (ran.status, ran.value, ran.state, ran.state_note) == ("ok", "42", "kept", None)
    assert ran.stderr == ""


async def test_functions_instances_imports_and_own_files_survive(
    engine: PyodideEngine, saved: Path, workspace: WorkspacePaths, session_id: str
) -> None:
    await engine.load_state(key(session_id), "local", saved)
    code = (
        "import ownmod\n"
        "(double(21), counter.bump(), type(counter).__name__, 'statistics' in sys.modules,\n"
        " statistics.mean([1, 3]), open('/tmp/own/note.txt').read(), ownmod.VALUE,\n"
        " os.getcwd(), sys.path == path_then)"
    )
    ran = await engine.run(make_plan(workspace, code, session=session_id))
    assert ran.status == "ok", ran.stderr
    assert ran.value == (
        "(42, 11, 'Counter', True, 2, 'made in the interpreter', 7, '/workspace', True)"
    )


async def test_forks_of_one_folder_are_independent(
    engine: PyodideEngine, saved: Path, workspace: WorkspacePaths, session_id: str
) -> None:
    forks = [f"{session_id}-fork{i}" for i in range(3)]
    try:
        for fork in forks:
            await engine.load_state(key(fork), "local", saved)
        first = await engine.run(make_plan(workspace, "x = 1000; counter.bump()", session=forks[0]))
        others = [
            await engine.run(make_plan(workspace, "x, counter.bump()", session=fork))
            for fork in forks[1:]
        ]
        assert (first.status, first.value, first.state) == ("ok", "11", "kept")
        assert [(r.value, r.state) for r in others] == [("(41, 11)", "kept")] * 2
    finally:
        for fork in forks:
            await engine.end_session(key(fork))


async def test_a_new_engine_loads_a_folder_saved_by_another(
    assets_dir: Path, saved: Path, workspace: WorkspacePaths, tmp_path: Path
) -> None:
    async with PyodideEngine(assets_dir=assets_dir, pool_size=0, saved_dir=tmp_path) as other:
        await other.load_state(key("restarted"), "local", saved)
        ran = await other.run(make_plan(workspace, "x + 1, double(4)", session="restarted"))
    assert (ran.status, ran.value, ran.state) == ("ok", "(42, 8)", "kept")


async def test_a_folder_of_another_engine_or_build_is_refused(
    engine: PyodideEngine, saved: Path, workspace: WorkspacePaths, tmp_path: Path, session_id: str
) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    for field, value in (("engine", "wasm"), ("build", "0" * 16), ("heap_bytes", 7)):
        foreign = tmp_path / field
        foreign.mkdir()
        for part in saved.iterdir():
            (foreign / part.name).write_bytes(part.read_bytes())
        (foreign / MANIFEST).write_text(json.dumps({**manifest, field: value}))
        with pytest.raises(StateImageRefused) as refused:
            await engine.load_state(key(session_id), "local", foreign)
        assert refused.value.engine == "pyodide"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StateImageRefused):
        await engine.load_state(key(session_id), "local", empty)
    ran = await engine.run(make_plan(workspace, "'x' in globals()", session=session_id))
    assert (ran.value, ran.state) == ("False", "new")  # nothing was placed


async def test_an_idle_session_reclaimed_at_max_sessions_is_paused_then_kept(
    assets_dir: Path, workspace: WorkspacePaths, tmp_path: Path
) -> None:
    async with PyodideEngine(
        assets_dir=assets_dir, pool_size=1, max_sessions=1, saved_dir=tmp_path / "saved"
    ) as small:
        first = await small.run(make_plan(workspace, "y = 'first'", session="a"))
        other = await small.run(make_plan(workspace, "z = 'other'", session="b"))
        assert small.pool_stats()["paused"] == 1
        assert small.sessions == (key("b"),)
        back = await small.run(make_plan(workspace, "y", session="a"))
        assert small.pool_stats()["paused"] == 1  # now b waits on disk
    assert (first.state, other.state) == ("new", "new")
    assert (back.status, back.value, back.state, back.state_note) == ("ok", "'first'", "kept", None)


async def test_limits_hold_after_a_resume(
    engine: PyodideEngine, saved: Path, workspace: WorkspacePaths, session_id: str
) -> None:
    limits = Limits(wall_timeout_s=2.0, memory_bytes=128 << 20)
    await engine.load_state(key(session_id), "local", saved)
    spin = make_plan(workspace, "x += 1\nwhile True: pass", session=session_id, limits=limits)
    stopped = await engine.run(spin)
    assert (stopped.status, stopped.limit, stopped.state) == ("timeout", "wall time 2 s", "kept")
    await engine.load_state(key(session_id), "local", saved)
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))"
    hog = await engine.run(make_plan(workspace, code, session=session_id, limits=limits))
    assert (hog.status, hog.limit, hog.state) == ("memory", f"memory {128 << 20} bytes", "kept")
    after = await engine.run(make_plan(workspace, "'x' in globals()", session=session_id))
    assert (after.value, after.state) == ("False", "lost")


async def test_an_interpreter_holding_an_open_file_is_not_saved(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str, tmp_path: Path
) -> None:
    await engine.run(make_plan(workspace, "log = open('/tmp/log.txt', 'w')", session=session_id))
    with pytest.raises(SaveRefused) as refused:
        await engine.save_state(key(session_id), tmp_path)
    assert "/tmp/log.txt" in refused.value.reason
    closed = await engine.run(make_plan(workspace, "log.close(); 'still here'", session=session_id))
    assert (closed.value, closed.state) == ("'still here'", "kept")
    assert await engine.save_state(key(session_id), tmp_path)


async def test_an_interpreter_with_a_pending_asyncio_task_is_not_saved(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str, tmp_path: Path
) -> None:
    code = (
        "import asyncio\ntask = asyncio.ensure_future(asyncio.sleep(600))\nawait asyncio.sleep(0)"
    )
    ran = await engine.run(make_plan(workspace, code, session=session_id))
    assert ran.status == "ok", ran.stderr
    with pytest.raises(SaveRefused) as refused:
        await engine.save_state(key(session_id), tmp_path)
    assert "asyncio" in refused.value.reason


async def test_a_session_without_an_interpreter_saves_nothing(
    engine: PyodideEngine, tmp_path: Path
) -> None:
    assert await engine.save_state(key("never-ran"), tmp_path) is False
    assert list(tmp_path.iterdir()) == []


async def test_a_resumed_interpreter_is_sealed_like_a_new_one(
    engine: PyodideEngine, saved: Path, workspace: WorkspacePaths, session_id: str
) -> None:
    await engine.load_state(key(session_id), "local", saved)
    gate = await engine.run(make_plan(workspace, "import js", session=session_id))
    assert (gate.state, gate.status) == ("kept", "error")
    assert gate.error is not None and gate.error.startswith("ModuleNotFoundError: js ")
    names = "[n for n in ('Deno', 'process', 'fetch', 'Worker') if hasattr(g, n)]"
    realm = await engine.run(make_plan(workspace, GLOBAL_THIS + names, session=session_id))
    assert (realm.status, realm.value) == ("ok", "[]")


async def test_an_interpreter_holding_javascript_objects_is_not_saved(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str, tmp_path: Path
) -> None:
    ran = await engine.run(make_plan(workspace, GLOBAL_THIS + "'held'", session=session_id))
    assert ran.status == "ok", ran.stderr
    with pytest.raises(SaveRefused) as refused:
        await engine.save_state(key(session_id), tmp_path)
    assert "JavaScript objects" in refused.value.reason
    still = await engine.run(make_plan(workspace, "'g' in globals()", session=session_id))
    assert (still.value, still.state) == ("True", "kept")


async def test_installed_packages_come_back_with_a_resumed_interpreter(
    engine: PyodideEngine, workspace: WorkspacePaths, session_id: str, tmp_path: Path
) -> None:
    (workspace.site / "tool.py").write_text("NAME = 'tool'\n")
    (workspace.site / "later.py").write_text("NAME = 'later'\n")
    first = await engine.run(make_plan(workspace, "import tool", session=session_id))
    assert first.status == "ok", first.stderr
    assert await engine.save_state(key(session_id), tmp_path)
    fork = f"{session_id}-other"
    await engine.load_state(key(fork), "local", tmp_path)
    code = "import later\ntool.NAME, later.NAME, open('/site/tool.py').read()"
    ran = await engine.run(make_plan(workspace, code, session=fork))
    assert (ran.status, ran.state) == ("ok", "kept"), ran.stderr
    assert ran.value == "('tool', 'later', \"NAME = 'tool'\\n\")"


async def test_a_saved_folder_that_fails_to_boot_gives_a_lost_session_and_a_fresh_interpreter(
    engine: PyodideEngine, saved: Path, workspace: WorkspacePaths, session_id: str, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for part in saved.iterdir():
        (damaged / part.name).write_bytes(part.read_bytes())
    size = (damaged / HEAP).stat().st_size
    (damaged / HEAP).write_bytes(b"\x01" * size)  # the manifest still matches: it loads
    await engine.load_state(key(session_id), "local", damaged)
    ran = await engine.run(make_plan(workspace, "'x' in globals(), 6 * 7", session=session_id))
    assert (ran.status, ran.value, ran.state) == ("ok", "(False, 42)", "lost")
    assert ran.state_note is not None
    assert ran.state_note.startswith("its saved state could not be resumed: its process did not")
    assert key(session_id) in engine.sessions
