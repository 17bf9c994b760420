"""Guests prepared ahead of a call: which calls they serve, and that a session's files always
come back to it (moved into a worker's slot for the run, and out again, whatever happens)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from sandboxes import (
    EngineCrashed,
    ExecutionPlan,
    HostMount,
    Limits,
    Program,
    WasmEngine,
    WorkspacePaths,
)
from sandboxes.wasm._prepared import PreparedGuest, Shape, fits, mount_identities
from sandboxes.wasm._slot import Slot

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]


def _workspace(root: Path) -> WorkspacePaths:
    files, site = root / "files", root / "site"
    files.mkdir(parents=True, exist_ok=True)
    site.mkdir(exist_ok=True)
    return WorkspacePaths(files, site)


def _plan(
    workspace: WorkspacePaths, code: str, stdin: bytes = b"", **limits: object
) -> ExecutionPlan:
    return ExecutionPlan(
        decision_id="test",
        engine="wasm",
        program=Program("code", code, stdin=stdin),
        limits=Limits(**limits),  # type: ignore[arg-type]
        workspace=workspace,
        session_id="test",
    )


@pytest.fixture
async def engine(tmp_path: Path, anyio_backend: str) -> AsyncIterator[WasmEngine]:
    """One worker of the test's own, its slot beside the workspaces."""
    async with WasmEngine(embedded_guests=False, workers=1, slots_dir=tmp_path / "slots") as engine:
        await engine.wait_ready()
        yield engine


async def _until_prepared(engine: WasmEngine, workspace: WorkspacePaths) -> None:
    """One call, so the worker prepares the next guest in the shape of `Limits()`."""
    result = await engine.run(_plan(workspace, "pass"))
    assert result.status == "ok", result.stderr


async def _all_workers_up(engine: WasmEngine, count: int) -> None:
    deadline = time.monotonic() + 120
    while engine.pool_stats()["workers"] < count:
        assert time.monotonic() < deadline, f"workers did not start: {engine.pool_stats()}"
        await asyncio.sleep(0.05)


def _served(engine: WasmEngine) -> tuple[int, int]:
    stats = engine.pool_stats()
    return stats["served_prepared"], stats["served_started"]


async def test_a_prepared_guest_serves_the_next_call_with_the_sessions_files(
    engine: WasmEngine, tmp_path: Path
) -> None:
    workspace = _workspace(tmp_path / "s")
    (workspace.files / "data.txt").write_text("from the host")
    await _until_prepared(engine, workspace)
    prepared, started = _served(engine)
    code = "print(open('data.txt').read()); open('out.txt', 'w').write('from the guest')"
    result = await engine.run(_plan(workspace, code))
    assert (result.status, result.stdout) == ("ok", "from the host\n")
    assert _served(engine) == (prepared + 1, started)
    assert (workspace.files / "out.txt").read_text() == "from the guest"
    assert result.files_written == ("out.txt",)
    assert not list((tmp_path / "slots").glob("*/workspace/*")), "nothing stays in the slot"


async def test_a_closed_engine_leaves_no_slot_behind(tmp_path: Path, anyio_backend: str) -> None:
    workspace = _workspace(tmp_path / "s")
    async with WasmEngine(embedded_guests=False, workers=2, slots_dir=tmp_path / "slots") as engine:
        await engine.wait_ready()
        await _all_workers_up(engine, 2)
        await _until_prepared(engine, workspace)
        assert len(list((tmp_path / "slots").iterdir())) == 2
    assert list((tmp_path / "slots").iterdir()) == []


async def test_a_prepared_guest_is_fresh_for_every_call(engine: WasmEngine, tmp_path: Path) -> None:
    workspace = _workspace(tmp_path / "s")
    await _until_prepared(engine, workspace)
    await engine.run(_plan(workspace, "import sys; sys.leftover = 1; secret = 42"))
    result = await engine.run(
        _plan(workspace, "import sys; print(hasattr(sys, 'leftover'), 'secret' in globals())")
    )
    assert result.stdout == "False False\n"


async def test_exit_codes_and_errors_read_as_in_a_started_guest(
    engine: WasmEngine, tmp_path: Path
) -> None:
    workspace = _workspace(tmp_path / "s")
    await _until_prepared(engine, workspace)
    prepared, _ = _served(engine)
    exited = await engine.run(_plan(workspace, "import sys; sys.exit(3)"))
    hard = await engine.run(_plan(workspace, "import os; os._exit(4)"))
    failed = await engine.run(_plan(workspace, "def f():\n    raise KeyError('k')\nf()"))
    assert (exited.status, exited.exit_code) == ("error", 3)
    assert (hard.status, hard.exit_code) == ("error", 4)
    assert failed.status == "error" and failed.error == "KeyError: 'k'"
    assert 'File "<code>", line 3' in failed.stderr and "<turn" not in failed.stderr
    assert _served(engine)[0] == prepared + 3


async def test_limits_stop_a_prepared_guest_and_say_which(
    engine: WasmEngine, tmp_path: Path
) -> None:
    workspace = _workspace(tmp_path / "s")
    await _until_prepared(engine, workspace)
    prepared, _ = _served(engine)
    began = time.monotonic()
    loop = await engine.run(_plan(workspace, "while True: pass", wall_timeout_s=1))
    assert loop.status == "timeout" and time.monotonic() - began < 3
    filled = await engine.run(
        _plan(workspace, "open('big', 'wb').write(b'x' * (8 << 20))", workspace_bytes=1 << 20)
    )
    assert filled.status == "killed" and "workspace" in (filled.limit or "")
    flood = await engine.run(_plan(workspace, "print('x' * 5000)", output_bytes=1000))
    assert flood.status == "output_limit" and "stdout" in flood.truncated
    assert _served(engine)[0] == prepared + 3


async def test_calls_a_prepared_guest_does_not_fit_start_their_own(
    engine: WasmEngine, tmp_path: Path
) -> None:
    workspace = _workspace(tmp_path / "s")
    await _until_prepared(engine, workspace)
    _, started = _served(engine)
    fed = await engine.run(_plan(workspace, "print(input().upper())", stdin=b"piped\n"))
    assert fed.stdout == "PIPED\n"
    smaller = await engine.run(_plan(workspace, "print('m')", memory_bytes=128 << 20))
    assert smaller.stdout == "m\n"
    (workspace.site / "installed_pkg.py").write_text("NAME = 'from site'\n")
    await _until_prepared(engine, workspace)  # prepared for Limits() again
    imported = await engine.run(_plan(workspace, "import installed_pkg; print(installed_pkg.NAME)"))
    assert imported.stdout == "from site\n", imported.stderr
    assert _served(engine)[1] >= started + 3


async def test_slots_on_another_file_system_fall_back_to_started_guests(
    tmp_path: Path, anyio_backend: str
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system to put the slots on")
    slots = shm / f"sandgate-test-slots-{os.getpid()}"
    empty, holding = _workspace(tmp_path / "empty"), _workspace(tmp_path / "holding")
    (holding.files / "kept.txt").write_text("kept")
    async with WasmEngine(embedded_guests=False, workers=1, slots_dir=slots) as engine:
        await engine.wait_ready()
        for n in range(3):
            read = await engine.run(_plan(holding, "print(open('kept.txt').read())"))
            assert read.stdout == "kept\n"
            wrote = await engine.run(_plan(empty, f"open('w{n}.txt', 'w').write('{n}')"))
            assert wrote.status == "ok" and wrote.files_written == (f"w{n}.txt",)
        assert _served(engine)[0] == 0
    assert (holding.files / "kept.txt").read_text() == "kept"
    assert sorted(p.name for p in empty.files.iterdir()) == ["w0.txt", "w1.txt", "w2.txt"]


async def test_calls_of_one_session_take_turns_and_sessions_never_mix(
    engine: WasmEngine, tmp_path: Path
) -> None:
    a, b = _workspace(tmp_path / "a"), _workspace(tmp_path / "b")
    (a.files / "mine.txt").write_text("a")
    (b.files / "mine.txt").write_text("b")
    code = (
        "import os, time\n"
        "print(sorted(os.listdir('.')), open('mine.txt').read())\n"
        "open(f'wrote-{time.monotonic_ns()}', 'w').write('x')\n"
        "time.sleep(0.2)\n"
    )
    results = await asyncio.gather(*(engine.run(_plan(ws, code)) for ws in (a, b, a, b)))
    assert [r.status for r in results] == ["ok"] * 4
    assert [r.stdout.split()[-1] for r in results] == ["a", "b", "a", "b"]
    for ws in (a, b):
        names = sorted(p.name for p in ws.files.iterdir())
        assert names[0] == "mine.txt" and len(names) == 3 and not any(".run-" in n for n in names)


async def test_a_worker_killed_mid_call_gives_the_files_back(
    engine: WasmEngine, tmp_path: Path
) -> None:
    workspace = _workspace(tmp_path / "s")
    (workspace.files / "precious.txt").write_text("do not lose me")
    await _until_prepared(engine, workspace)
    task = asyncio.create_task(
        engine.run(_plan(workspace, "open('new.txt', 'w').write('n'); import time; time.sleep(60)"))
    )
    deadline = time.monotonic() + 30
    while not any(  # running in the slot, new.txt written and closed
        f.read_text() == "n" for f in (tmp_path / "slots").glob("*/workspace/new.txt")
    ):
        assert time.monotonic() < deadline, "the call never started in the slot"
        await asyncio.sleep(0.02)
    (pid,) = engine.worker_pids()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineCrashed):
        await task
    assert (workspace.files / "precious.txt").read_text() == "do not lose me"
    assert (workspace.files / "new.txt").read_text() == "n"
    after = await engine.run(_plan(workspace, "print(open('precious.txt').read())"))
    assert after.stdout == "do not lose me\n"


async def test_files_stranded_by_a_dead_server_go_home_at_the_next_start(
    tmp_path: Path, anyio_backend: str
) -> None:
    workspace = _workspace(tmp_path / "s")
    stranded = Slot.create(tmp_path / "slots", "worker-999999999")
    (workspace.files / "a.txt").write_text("a")
    stranded.move_in(workspace.files)
    assert not (workspace.files / "a.txt").exists()
    async with WasmEngine(embedded_guests=False, workers=1, slots_dir=tmp_path / "slots") as engine:
        await engine.wait_ready()
        assert (workspace.files / "a.txt").read_text() == "a"
        assert not stranded.root.exists()


async def test_calls_of_one_session_with_an_empty_folder_run_at_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Clients of one grant share its session over HTTP: nothing to move, nobody waits."""
    workspace = _workspace(tmp_path / "shared")
    async with WasmEngine(embedded_guests=False, workers=3, slots_dir=tmp_path / "slots") as engine:
        await engine.wait_ready()
        await _all_workers_up(engine, 3)
        began = time.monotonic()
        results = await asyncio.gather(
            *(
                engine.run(_plan(workspace, f"import time; time.sleep(1.5); open('r{n}', 'w')"))
                for n in range(3)
            )
        )
        elapsed = time.monotonic() - began
    assert [r.status for r in results] == ["ok"] * 3
    assert elapsed < 1.5 * 2, f"three 1.5 s calls took {elapsed:.1f} s: they did not overlap"
    assert sorted(p.name for p in workspace.files.iterdir()) == ["r0", "r1", "r2"]


async def test_a_call_never_finds_its_sessions_files_away_in_another_calls_slot(
    tmp_path: Path, anyio_backend: str
) -> None:
    workspace = _workspace(tmp_path / "s")
    (workspace.files / "data.txt").write_text("shared")
    code = "import time; time.sleep({}); print(open('data.txt').read())"
    async with WasmEngine(embedded_guests=False, workers=2, slots_dir=tmp_path / "slots") as engine:
        await engine.wait_ready()
        await _all_workers_up(engine, 2)
        for _ in range(2):  # both workers prepared
            await _until_prepared(engine, _workspace(tmp_path / "warm"))
        first = asyncio.create_task(engine.run(_plan(workspace, code.format(1))))
        deadline = time.monotonic() + 30
        while not list((tmp_path / "slots").glob("*/workspace/data.txt")):
            assert time.monotonic() < deadline, f"not run in a slot: {engine.pool_stats()}"
            await asyncio.sleep(0.01)  # the first call holds the files in its slot now
        second = await engine.run(_plan(workspace, code.format(0)))
        assert ((await first).stdout, second.stdout) == ("shared\n", "shared\n")


async def test_a_prepared_guest_is_granted_the_operator_mounts_of_the_call_before(
    engine: WasmEngine, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("one")
    workspace = replace(_workspace(tmp_path / "s"), mounts=(HostMount("data", data),))
    read = "print(open('/mnt/data/a.txt').read())"
    first = await engine.run(_plan(workspace, read))  # the next guest is prepared with them
    assert first.stdout == "one\n", first.stderr
    prepared, started = _served(engine)
    again = await engine.run(_plan(workspace, read))
    assert again.stdout == "one\n", again.stderr
    assert _served(engine) == (prepared + 1, started)
    # The folder is replaced under its path: the code sees the new one, whichever guest serves.
    data.rename(tmp_path / "old-data")
    data.mkdir()
    (data / "a.txt").write_text("two")
    moved = await engine.run(_plan(workspace, read))
    assert moved.stdout == "two\n", moved.stderr


def test_a_guest_granted_a_mount_folder_serves_only_while_its_path_names_that_folder(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    request = {
        "memory_bytes": 1 << 29,
        "mplconfig": None,
        "mounts": [["data", str(data), True]],
    }
    shape = Shape.of(request)
    guest = PreparedGuest(None, shape, Slot(tmp_path / "slot"), mount_identities(shape.mounts))
    assert fits(request, guest)
    assert not fits({**request, "mounts": [["data", str(data), False]]}, guest)
    assert not fits({**request, "mounts": []}, guest)
    data.rename(tmp_path / "old-data")
    data.mkdir()
    assert not fits(request, guest)
