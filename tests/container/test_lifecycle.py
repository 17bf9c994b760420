"""Start-up failures, pool behaviour, and clean-up after a server killed mid-run."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandboxes import CapabilityMissing, EngineUnavailable, WorkspacePaths
from sandboxes.container import ContainerEngine, Runtime
from tests.container.conftest import RUNTIMES, Tracker, make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.container]

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0


async def test_no_daemon_is_unavailable_at_start_with_a_fix(tmp_path: Path) -> None:
    engine = ContainerEngine(docker_host=f"unix://{tmp_path}/no-docker.sock", pool_dir=tmp_path)
    with pytest.raises(EngineUnavailable, match=r"docker-setup\.sh"):
        await engine.start()
    await engine.aclose()


async def test_missing_image_is_unavailable_at_start(tracker: Tracker, tmp_path: Path) -> None:
    engine = tracker.track(ContainerEngine(image="sandgate-missing:nothing", pool_dir=tmp_path))
    with pytest.raises(EngineUnavailable, match="sandgate-missing:nothing is missing"):
        await engine.start()
    await engine.aclose()


async def test_mirror_network_is_refused_before_anything_runs(
    engine: ContainerEngine, workspace: WorkspacePaths
) -> None:
    with pytest.raises(CapabilityMissing) as refused:
        await engine.run(make_plan(workspace, "pass", network="mirror"))
    assert (refused.value.engine, refused.value.capabilities) == ("container", ("network=mirror",))


async def test_pool_serves_warm_runs_and_a_different_shape_starts_cold(
    tracker: Tracker, tmp_path: Path, workspace: WorkspacePaths
) -> None:
    engine = tracker.track(ContainerEngine(pool_size=1, pool_dir=tmp_path / "pool"))
    async with engine:
        assert await engine.wait_warm(WAIT_S)
        warm = await engine.run(make_plan(workspace, "print('warm')"))
        assert (warm.status, engine.stats().warm_runs) == ("ok", 1)
        odd = await engine.run(make_plan(workspace, "print('odd')", memory_bytes=300 << 20))
        assert (odd.status, odd.stdout, engine.stats().cold_runs) == ("ok", "odd\n", 1)
        figures = engine.pool_stats()  # what the server's /metrics shows per engine
        assert (figures["warm_runs"], figures["cold_runs"], figures["retried_runs"]) == (1, 1, 0)
    assert tracker.leftovers(engine.instance) == []
    assert list((tmp_path / "pool").iterdir()) == []


async def test_a_session_on_another_filesystem_runs_cold(
    tracker: Tracker, tmp_path: Path, workspace: WorkspacePaths
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary folder")
    pool = shm / f"sandgate-test-pool-{os.getpid()}"
    try:
        engine = tracker.track(ContainerEngine(pool_size=1, pool_dir=pool))
        async with engine:
            assert await engine.wait_warm(WAIT_S)
            result = await engine.run(make_plan(workspace, "print('direct')"))
            assert (result.status, result.stdout) == ("ok", "direct\n")
            stats = engine.stats()
            assert (stats.warm_runs, stats.cold_runs, stats.retried_runs) == (0, 1, 0)
        assert tracker.leftovers(engine.instance) == []
    finally:
        shutil.rmtree(pool, ignore_errors=True)


async def test_engine_start_leaves_other_folders_in_the_pool_folder_alone(
    tracker: Tracker, tmp_path: Path
) -> None:
    pool = tmp_path / "pool"
    (pool / "shared" / "0123456789abcdef").mkdir(parents=True)
    (pool / "shared" / "0123456789abcdef" / "data.txt").write_text("not the engine's")
    (pool / "0123456789ab").mkdir()
    (pool / "0123456789ab" / "data.txt").write_text("nor this")
    async with tracker.track(ContainerEngine(pool_size=0, pool_dir=pool)):
        pass
    assert (pool / "shared" / "0123456789abcdef" / "data.txt").read_text() == "not the engine's"
    assert (pool / "0123456789ab" / "data.txt").read_text() == "nor this"
    assert sorted(os.listdir(pool)) == ["0123456789ab", "shared"]


CRASHING_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from sandboxes import ExecutionPlan, Limits, Program, WorkspacePaths
    from sandboxes.container import ContainerEngine

    async def main(runtime, pool, files, site):
        engine = ContainerEngine(runtime=runtime, pool_size=1, pool_dir=Path(pool))
        await engine.start()
        print(engine.instance, flush=True)
        workspace = WorkspacePaths(Path(files), Path(site))
        plan = ExecutionPlan("crash", "container", Program("code", "while True: pass"),
                             Limits(wall_timeout_s=120), workspace, "s")
        await engine.run(plan)

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_server_killed_mid_run_leaves_nothing_behind(
    runtime: Runtime, tracker: Tracker, tmp_path: Path, workspace: WorkspacePaths
) -> None:
    pool = tmp_path / "pool"
    (workspace.files / "keep.txt").write_text("mine")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_SERVER,
        runtime,
        str(pool),
        str(workspace.files),
        str(workspace.site),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(WAIT_S):
            dead_instance = (await process.stdout.readline()).decode().strip()
        tracker.instances.add(dead_instance)
        deadline = time.monotonic() + WAIT_S
        while (workspace.files / "keep.txt").exists():  # lent to the container: the run is on
            assert time.monotonic() < deadline, "the run never started"
            await asyncio.sleep(0.05)
        assert [
            c for c in tracker.docker.labelled() if c.labels["sandgate.instance"] == dead_instance
        ]
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()
    async with tracker.track(ContainerEngine(runtime=runtime, pool_size=0, pool_dir=pool)):
        left = [c.id for c in tracker.docker.labelled(**{"sandgate.instance": dead_instance})]
        assert left == []
        assert (workspace.files / "keep.txt").read_text() == "mine"
    assert not (pool / dead_instance).exists()


async def test_a_cancelled_run_gives_files_back_and_removes_its_container(
    engine: ContainerEngine, workspace: WorkspacePaths, tracker: Tracker
) -> None:
    (workspace.files / "keep.txt").write_text("mine")
    plan = make_plan(workspace, "while True: pass", wall_timeout_s=60)
    task = asyncio.ensure_future(engine.run(plan))
    deadline = time.monotonic() + WAIT_S
    while (workspace.files / "keep.txt").exists():  # lent to the container: the run is on
        assert time.monotonic() < deadline and not task.done(), "the run never started"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (workspace.files / "keep.txt").read_text() == "mine"
    cid = engine.container_for(plan.decision_id)
    assert cid is not None and cid not in {c.id for c in tracker.docker.labelled()}
