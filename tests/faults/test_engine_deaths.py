"""The process running a call dies: a wasm worker (SIGKILL, mid-call and while idle), the Deno
process of a Pyodide session (SIGKILL), the container of a run (`docker kill`).

The affected call gets a clear error result; the next call works. How it is counted follows
what the engine can know: a wasm worker is the host's own process, so its death is an
infrastructure failure (`infra_error`, rolled back). A Deno process or a container holds the
user's code: killed from outside, the engine cannot tell that apart from a kill the code
brought on itself (the kernel's OOM killer, a CPU-time limit), so the run ends as `killed`,
and counts (a guest must not be able to buy free runs by crashing its sandbox).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandboxes import Engine, WasmEngine, session_key
from tests.results import text_of

from .conftest import Stack, fault_policy, require, stack, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SLEEPER = "import time\nfor _ in range(600):\n    time.sleep(0.1)"


@pytest.fixture
async def own_wasm(anyio_backend: str) -> AsyncIterator[WasmEngine]:
    """A one-worker engine of the test's own (its worker gets killed)."""
    async with WasmEngine(workers=1) as engine:
        await engine.wait_ready()
        yield engine


def _infra_error(live: Stack, result: object, decision: str, engine: str) -> None:
    from mcp_types import CallToolResult

    assert isinstance(result, CallToolResult) and result.is_error
    text = text_of(result)
    assert f"the {engine} sandbox failed before the code finished" in text, text
    assert "nothing was counted" in text, text
    outcome = live.outcome_of(decision)
    assert outcome["outcome"] == "infra_error" and outcome["error"], outcome


@pytest.mark.wasm
async def test_a_wasm_worker_killed_mid_call(own_wasm: WasmEngine, tmp_path: Path) -> None:
    async with stack(tmp_path, fault_policy(max_runs=2), {"wasm": own_wasm}) as live:
        call = asyncio.create_task(live.run(SLEEPER))
        decision = await wait_until(live.pending_decision, "the call to be allowed")
        await wait_until(lambda: own_wasm.pool_stats()["idle"] == 0, "the worker to take it")
        (pid,) = own_wasm.worker_pids()
        os.kill(pid, signal.SIGKILL)
        result = await call
        _infra_error(live, result, decision, "wasm")
        assert "WorkerDied" in live.outcome_of(decision)["error"]
        assert live.units() == 0  # rolled back
        for _ in range(2):  # the limit (2) is whole: the killed call used none of it
            again = await live.run("print('after')")
            assert not again.is_error, text_of(again)
        over = await live.run("print('over')")
        assert over.is_error and "/tools/run_code/limits/runs" in text_of(over)
        assert own_wasm.worker_pids() and pid not in own_wasm.worker_pids()


@pytest.mark.wasm
async def test_a_wasm_worker_killed_while_idle_is_replaced_before_the_next_call(
    own_wasm: WasmEngine, tmp_path: Path
) -> None:
    async with stack(tmp_path, fault_policy(max_runs=5), {"wasm": own_wasm}) as live:
        assert not (await live.run("print(1)")).is_error
        await wait_until(lambda: own_wasm.pool_stats()["idle"] == 1, "the worker to be idle")
        (pid,) = own_wasm.worker_pids()
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: pid not in own_wasm.worker_pids(), "the engine to see it die")
        first = await live.run("print(2)")  # waits for the replacement; never meets the corpse
        assert not first.is_error, text_of(first)
        assert "2" in text_of(first)
        assert own_wasm.worker_pids() and pid not in own_wasm.worker_pids()
        assert live.units() == 2


@pytest.mark.wasm
async def test_a_wasm_worker_killed_the_moment_before_a_call_is_not_met_by_it(
    own_wasm: WasmEngine, tmp_path: Path
) -> None:
    """Killed, and the call sent before the engine saw the death: the write fails, nothing
    ran, and the call goes to a fresh worker."""
    async with stack(tmp_path, fault_policy(max_runs=5), {"wasm": own_wasm}) as live:
        assert not (await live.run("print(1)")).is_error
        await wait_until(lambda: own_wasm.pool_stats()["idle"] == 1, "the worker to be idle")
        (pid,) = own_wasm.worker_pids()
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(_wait_reaped_by_kernel, pid)
        first = await live.run("print(2)")
        assert not first.is_error, text_of(first)
        assert live.units() == 2


def _wait_reaped_by_kernel(pid: int) -> None:
    """Until the process is a zombie (its pipes closed), without reaping it ourselves."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.005)


# -- pyodide -----------------------------------------------------------------------------------


@pytest.fixture
async def pyodide_engine(anyio_backend: str) -> AsyncIterator[object]:
    try:
        import deno  # noqa: F401

        from sandboxes.pyodide import PyodideEngine, setup_pyodide
    except ImportError as exc:
        require(False, f"the pyodide engine cannot be imported: {exc}")
        raise
    try:
        assets = setup_pyodide()
    except Exception as exc:  # setup's own error says what is missing
        require(False, f"the Pyodide assets could not be prepared: {exc}")
        raise
    async with PyodideEngine(assets_dir=assets, pool_size=1) as engine:
        await engine.wait_ready()
        yield engine


@pytest.mark.pyodide
async def test_the_deno_process_of_a_session_killed_mid_call(
    pyodide_engine: object, wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    from sandboxes.pyodide import PyodideEngine

    assert isinstance(pyodide_engine, PyodideEngine)
    engines: dict[str, Engine] = {"wasm": wasm_engine, "pyodide": pyodide_engine}
    async with stack(
        tmp_path, fault_policy(engine="pyodide", max_runs=5, state="persistent"), engines
    ) as live:
        kept = await live.run("x = 41", session="victim")
        assert not kept.is_error, text_of(kept)
        pid = pyodide_engine.session_pid(session_key("local", "named:victim"))
        assert pid is not None
        call = asyncio.create_task(live.run("while True:\n    pass", session="victim"))
        decision = await wait_until(live.pending_decision, "the call to be allowed")
        os.kill(pid, signal.SIGKILL)
        result = await call
        assert result.is_error and result.structured_content is not None
        payload = result.structured_content
        assert (payload["status"], payload.get("limit")) == ("killed", None), payload
        assert "signal 9" in str(payload["error"]), payload  # no limit: it died of a signal
        outcome = live.outcome_of(decision)
        assert (outcome["outcome"], outcome["status"]) == ("completed", "killed")
        after = await live.run("print('x' in globals())", session="victim")
        assert not after.is_error, text_of(after)
        payload = after.structured_content or {}
        assert payload["stdout"].strip() == "False"  # a fresh interpreter
        assert "interpreter was restarted" in payload["stderr"]
        assert pyodide_engine.session_pid(session_key("local", "named:victim")) not in (None, pid)
        assert live.units() == 3


# -- container ---------------------------------------------------------------------------------


def _docker_ready() -> None:
    docker = shutil.which("docker")
    require(docker is not None, "the docker command is not installed")
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False)
    require(info.returncode == 0, "no Docker daemon answers (scripts/docker-setup.sh starts it)")
    require(os.geteuid() == 0, "the container engine's workspace hand-over needs root")


def remove_containers(instance: str, host: str | None = None) -> None:
    """Remove every container of engine `instance` (on the daemon at `host`)."""
    base = ["docker"] + (["-H", host] if host else [])
    found = subprocess.run(
        [*base, "ps", "-aq", "--filter", f"label=sandgate.instance={instance}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.split()
    if found:
        subprocess.run([*base, "rm", "-f", *found], capture_output=True, timeout=120, check=False)


@pytest.fixture
def container_engine(tmp_path: Path) -> Iterator[object]:
    _docker_ready()
    from sandboxes.container import ContainerEngine

    engine = ContainerEngine(runtime="runc", pool_size=1, pool_dir=tmp_path / "pool")
    try:
        yield engine
    finally:
        remove_containers(engine.instance)


@pytest.mark.container
async def test_the_container_of_a_run_killed_mid_call(
    container_engine: object, wasm_engine: WasmEngine, tmp_path: Path
) -> None:
    from sandboxes.container import ContainerEngine

    engine = container_engine
    assert isinstance(engine, ContainerEngine)
    async with engine:
        engines: dict[str, Engine] = {"wasm": wasm_engine, "container:runc": engine}
        async with stack(tmp_path, fault_policy(engine="container", max_runs=5), engines) as live:
            call = asyncio.create_task(live.run(SLEEPER))
            decision = await wait_until(live.pending_decision, "the call to be allowed")
            cid = await wait_until(lambda: engine.container_for(decision), "its container")
            killed = subprocess.run(
                ["docker", "kill", cid], capture_output=True, timeout=60, check=False
            )
            assert killed.returncode == 0, killed.stderr
            result = await call
            assert result.is_error and result.structured_content is not None
            payload = result.structured_content
            assert payload["status"] == "killed", payload
            assert "137" in str(payload["error"]) or "signal" in str(payload["error"]), payload
            outcome = live.outcome_of(decision)
            assert (outcome["outcome"], outcome["status"]) == ("completed", "killed")
            after = await live.run("import sys; print(sys.platform)")
            assert not after.is_error, text_of(after)
            assert (after.structured_content or {})["stdout"].strip() == "linux"
            assert live.units() == 2
