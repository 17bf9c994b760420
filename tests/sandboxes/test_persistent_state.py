"""Sessions that keep their interpreter (`ExecutionPlan.state = "persistent"`), the same on
every engine: globals and imports kept between a session's runs, never across sessions or
grants; a run stopped by a limit ends the interpreter and the next run says it was lost and
why; an ordinary exception keeps it; `end_session` starts anew; `state="fresh"` keeps nothing;
the session's files are in its folder between runs; an idle interpreter gives way to another
session when the engine is full.

An engine without `capabilities.persistent_state` refuses a persistent plan with
`CapabilityMissing` before anything runs: each case asserts that refusal there, and stops.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxes import (
    CapabilityMissing,
    Engine,
    ExecutionPlan,
    Limits,
    Program,
    RunResult,
    WasmEngine,
    WorkspacePaths,
    limit_text,
    session_key,
)
from sandboxes._live import RECLAIMED, lost_line
from sandboxes._types import StateMode
from tests.sandboxes.conftest import Target

pytestmark = pytest.mark.anyio

LIMITS = Limits(wall_timeout_s=30.0, memory_bytes=256 * 2**20)


@dataclass
class Session:
    """One session (grant, id, its own workspace) on the engine under test."""

    engine: Engine
    kind: str
    runtime: str | None
    grant: str
    session_id: str
    workspace: WorkspacePaths

    @property
    def key(self) -> str:
        return session_key(self.grant, self.session_id)

    async def run(
        self,
        source: str,
        *,
        state: StateMode = "persistent",
        limits: Limits = LIMITS,
        pool_share: float = 1.0,
    ) -> RunResult:
        plan = ExecutionPlan(
            decision_id=f"persistent-{secrets.token_hex(4)}",
            engine=self.kind,
            program=Program("code", source, final_expression=True),
            limits=limits,
            workspace=self.workspace,
            session_id=self.session_id,
            runtime=self.runtime,
            grant=self.grant,
            pool_share=pool_share,
            state=state,
        )
        return await self.engine.run(plan)


OpenSession = Callable[..., Session]


def _workspace(folder: Path) -> WorkspacePaths:
    files, site = folder / "files", folder / "site"
    files.mkdir(parents=True, mode=0o700)
    site.mkdir(mode=0o700)
    return WorkspacePaths(files, site)


@pytest.fixture
async def open_session(target: Target, tmp_path: Path) -> AsyncIterator[OpenSession]:
    """Opens sessions on the engine under test (each with its own workspace), ended after the
    test. On an engine without persistent state, asserts its refusal and skips the case."""
    made: list[Session] = []

    def make(*, grant: str = "local", session_id: str | None = None) -> Session:
        name = session_id or f"persistent-{secrets.token_hex(4)}"
        folder = tmp_path / f"{grant}-{name}-{len(made)}"
        session = Session(
            target.engine, target.kind, target.runtime, grant, name, _workspace(folder)
        )
        made.append(session)
        return session

    if not target.engine.capabilities.persistent_state:
        with pytest.raises(CapabilityMissing) as refused:
            await make().run("k = 41")
        assert refused.value.capabilities == ("persistent_state",)
        pytest.skip(f"{target.name} refuses persistent state (CapabilityMissing, asserted)")
    yield make
    for session in made:
        await target.engine.end_session(session.key)


def _value(result: RunResult) -> tuple[str, str | None, str]:
    return result.status, result.value, result.state


async def test_a_global_is_kept_between_runs(open_session: OpenSession) -> None:
    session = open_session()
    first = await session.run("k = 41")
    assert (first.status, first.state, first.state_note) == ("ok", "new", None)
    second = await session.run("k + 1")
    assert _value(second) == ("ok", "42", "kept")
    assert second.state_note is None


async def test_imports_are_kept_between_runs(open_session: OpenSession) -> None:
    session = open_session()
    assert _value(await session.run("import json")) == ("ok", None, "new")
    assert _value(await session.run("json.dumps([1])")) == ("ok", "'[1]'", "kept")


async def test_each_run_starts_in_the_workspace(open_session: OpenSession) -> None:
    """A run that left the workspace folder does not leave the next run there."""
    session = open_session()
    first = await session.run("import os\nos.mkdir('sub')\nos.chdir('sub')\nos.getcwd()")
    assert first.status == "ok" and (first.value or "").endswith("/workspace/sub'"), first
    assert _value(await session.run("os.getcwd()")) == ("ok", "'/workspace'", "kept")


async def test_two_sessions_do_not_share_globals(open_session: OpenSession) -> None:
    one, other = open_session(), open_session()
    assert (await one.run("k = 41")).status == "ok"
    seen = await other.run("k")
    assert (seen.status, seen.state) == ("error", "new")
    assert (seen.error or "").startswith("NameError")
    assert _value(await one.run("k")) == ("ok", "41", "kept")


async def test_two_grants_with_the_same_session_id_do_not_share_globals(
    open_session: OpenSession,
) -> None:
    mine = open_session(grant="grant-a", session_id="shared-name")
    theirs = open_session(grant="grant-b", session_id="shared-name")
    assert (await mine.run("k = 41")).status == "ok"
    seen = await theirs.run("k")
    assert (seen.status, seen.state) == ("error", "new")
    assert (seen.error or "").startswith("NameError")
    assert _value(await mine.run("k")) == ("ok", "41", "kept")


async def test_a_timeout_ends_the_interpreter_and_the_next_run_says_why(
    open_session: OpenSession,
) -> None:
    session = open_session()
    short = dataclasses.replace(LIMITS, wall_timeout_s=2.0)
    assert (await session.run("k = 41", limits=short)).status == "ok"
    stopped = await session.run("while True:\n    pass", limits=short)
    assert (stopped.status, stopped.state) == ("timeout", "kept")
    after = await session.run("k", limits=short)
    assert (after.status, after.state) == ("error", "lost")
    assert after.state_note is not None
    assert limit_text("wall_time", short) in after.state_note
    assert after.stderr.startswith(lost_line(after.state_note))
    assert (after.error or "").startswith("NameError")
    assert _value(await session.run("k = 1\nk", limits=short)) == ("ok", "1", "kept")


async def test_running_out_of_memory_ends_the_interpreter(open_session: OpenSession) -> None:
    session = open_session()
    assert (await session.run("k = 41")).status == "ok"
    grow = "held = []\nwhile True:\n    held.append(bytearray(16 * 2**20))"
    assert (await session.run(grow)).status == "memory"
    after = await session.run("k")
    assert (after.status, after.state) == ("error", "lost")
    assert limit_text("memory", LIMITS) in (after.state_note or "")
    assert (after.error or "").startswith("NameError")


async def test_an_exception_or_sys_exit_keeps_the_interpreter(open_session: OpenSession) -> None:
    session = open_session()
    assert (await session.run("k = 41")).status == "ok"
    raised = await session.run("raise ValueError('boom')")
    assert (raised.status, raised.error, raised.state) == ("error", "ValueError: boom", "kept")
    exited = await session.run("import sys\nsys.exit(3)")
    assert (exited.status, exited.exit_code, exited.state) == ("error", 3, "kept")
    assert _value(await session.run("k")) == ("ok", "41", "kept")


async def test_ending_the_session_starts_a_new_interpreter(
    open_session: OpenSession, target: Target
) -> None:
    session = open_session()
    assert (await session.run("k = 41")).status == "ok"
    assert await target.engine.end_session(session.key) is True
    assert await target.engine.end_session(session.key) is False
    after = await session.run("k")
    assert (after.status, after.state, after.state_note) == ("error", "new", None)
    assert (after.error or "").startswith("NameError")


async def test_fresh_runs_keep_nothing(open_session: OpenSession) -> None:
    session = open_session()
    first = await session.run("k = 41", state="fresh")
    assert (first.status, first.state) == ("ok", "fresh")
    second = await session.run("k", state="fresh")
    assert (second.status, second.state) == ("error", "fresh")
    assert (second.error or "").startswith("NameError")


async def test_a_file_written_in_a_run_is_in_the_session_folder_between_runs(
    open_session: OpenSession,
) -> None:
    session = open_session()
    wrote = await session.run("with open('note.txt', 'w') as f:\n    f.write('from the guest')")
    assert (wrote.status, wrote.files_written) == ("ok", ("note.txt",))
    note = session.workspace.files / "note.txt"
    assert note.read_text() == "from the guest"
    note.write_text("from the host")
    assert _value(await session.run("open('note.txt').read()")) == (
        "ok",
        "'from the host'",
        "kept",
    )


async def test_an_idle_interpreter_gives_way_to_another_session_of_a_full_grant(
    open_session: OpenSession,
) -> None:
    grant = f"lru-{secrets.token_hex(4)}"
    first, second = open_session(grant=grant), open_session(grant=grant)
    alone = 1e-9  # this grant's share of the engine's live interpreters: one
    assert (await first.run("k = 41", pool_share=alone)).state == "new"
    assert (await second.run("k = 1", pool_share=alone)).state == "new"
    after = await first.run("k", pool_share=alone)
    if first.engine.capabilities.snapshots:  # the idle interpreter was paused to disk
        assert (after.status, after.stdout, after.state) == ("ok", "", "kept")
        assert (await first.run("print(k)", pool_share=alone)).stdout == "41\n"
    else:
        assert (after.status, after.state, after.state_note) == ("error", "lost", RECLAIMED)
        assert after.stderr.startswith(lost_line(RECLAIMED))


# The wasm engine's own figures: its maximum of live guests, and its fixed memory cap.


def _wasm_session(engine: WasmEngine, tmp_path: Path, name: str) -> Session:
    return Session(engine, "wasm", None, "local", name, _workspace(tmp_path / name))


@pytest.mark.wasm
async def test_wasm_at_its_maximum_pauses_the_least_recently_used_idle_guest_to_disk(
    tmp_path: Path,
) -> None:
    async with WasmEngine(workers=1, max_sessions=1) as engine:
        await engine.wait_ready()
        first = _wasm_session(engine, tmp_path, "first")
        second = _wasm_session(engine, tmp_path, "second")
        assert (await first.run("k = 41")).state == "new"
        assert engine.pool_stats()["live_sessions"] == 1
        assert (await second.run("k = 1")).state == "new"
        assert engine.pool_stats()["live_sessions"] == 1
        assert engine.pool_stats()["paused"] == 1  # the first guest, saved to disk
        after = await first.run("print(k)")
        assert (after.status, after.stdout, after.state) == ("ok", "41\n", "kept")
        assert engine.pool_stats()["max_live_sessions"] == 1


@pytest.mark.wasm
async def test_wasm_another_memory_limit_starts_another_guest(
    wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    session = _wasm_session(wasm_engine, tmp_path, f"memory-{secrets.token_hex(4)}")
    try:
        assert (await session.run("k = 41")).state == "new"
        more = dataclasses.replace(LIMITS, memory_bytes=LIMITS.memory_bytes * 2)
        after = await session.run("k", limits=more)
        assert (after.status, after.state, after.state_note) == (
            "error",
            "lost",
            "the memory limit changed",
        )
        assert _value(await session.run("k = 2\nk", limits=more)) == ("ok", "2", "kept")
    finally:
        await wasm_engine.end_session(session.key)
