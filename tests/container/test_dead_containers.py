"""A container that dies before the run's code reaches it is never blamed on the user: a pool
container killed while idle is not handed out, and one that is (it died just as it was taken)
is recognised and the run moves to a fresh container."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from sandboxes import WorkspacePaths
from sandboxes.container import ContainerEngine, Runtime
from sandboxes.container._docker import ContainerState, Docker
from sandboxes.container._sandbox import Sandbox, _exited_before_request
from tests.container.conftest import RUNTIMES, Tracker, make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.container]

WAIT_S = 60.0


def _idle_container(tracker: Tracker, engine: ContainerEngine) -> str:
    (found,) = tracker.docker.labelled(**{"sandgate.instance": engine.instance})
    return found.id


def _docker_kill(cid: str) -> None:
    """`docker kill` the container and wait until dockerd says it has exited."""
    for command in (["docker", "kill", cid], ["docker", "wait", cid]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, check=False)
        assert done.returncode == 0, done.stderr


@contextlib.asynccontextmanager
async def _one_warm_container(
    runtime: Runtime, tracker: Tracker, pool_dir: Path
) -> AsyncIterator[tuple[ContainerEngine, str]]:
    """An engine with a pool of one container, once it is warm, and that container's id."""
    engine = tracker.track(ContainerEngine(runtime=runtime, pool_size=1, pool_dir=pool_dir))
    async with engine:
        assert await engine.wait_warm(WAIT_S)
        yield engine, _idle_container(tracker, engine)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_an_idle_container_killed_from_outside_is_not_handed_to_the_next_run(
    runtime: Runtime, tracker: Tracker, tmp_path: Path, workspace: WorkspacePaths
) -> None:
    async with _one_warm_container(runtime, tracker, tmp_path / "pool") as (engine, killed):
        _docker_kill(killed)
        plan = make_plan(workspace, "print('after')")
        result = await engine.run(plan)
        assert (result.status, result.stdout, result.error) == ("ok", "after\n", None)
        assert engine.container_for(plan.decision_id) not in (None, killed)
        assert await engine.wait_warm(WAIT_S)
        assert killed not in tracker.leftovers(engine.instance)
    assert tracker.leftovers(engine.instance) == []


async def test_a_run_handed_a_dead_container_moves_to_a_fresh_one(
    tracker: Tracker, tmp_path: Path, workspace: WorkspacePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the container dies between being taken and being sent the code: the pool's
    liveness check is made to miss, so the exchange itself has to notice."""
    (workspace.files / "keep.txt").write_text("mine")
    async with _one_warm_container("runc", tracker, tmp_path / "pool") as (engine, killed):
        _docker_kill(killed)
        monkeypatch.setattr(Sandbox, "alive", lambda self: True)
        plan = make_plan(workspace, "print(open('keep.txt').read())")
        result = await engine.run(plan)
        assert (result.status, result.stdout, result.exit_code) == ("ok", "mine\n", 0)
        assert engine.container_for(plan.decision_id) not in (None, killed)
        stats = engine.stats()
        assert (stats.warm_runs, stats.cold_runs, stats.retried_runs) == (0, 1, 1)
    assert (workspace.files / "keep.txt").read_text() == "mine"
    assert tracker.leftovers(engine.instance) == []


@pytest.mark.parametrize(("lifetime_s", "before"), [(2.0, True), (5.5, False), (None, False)])
def test_only_a_container_that_lived_less_than_it_waited_missed_the_code(
    lifetime_s: float | None, before: bool
) -> None:
    state = ContainerState(
        running=False, exit_code=137, oom_killed=False, error="", lifetime_s=lifetime_s
    )
    assert _exited_before_request(state, idle_s=5.0) is before


class _LateOomFlag:
    """A daemon that reports a SIGKILLed container's OOM flag only from its `n`th read on, as
    dockerd does when the runtime's OOM event arrives after the exit; with `event`, it logs the
    `oom` event but never sets the flag, as dockerd 20.10 did under load."""

    def __init__(self, n: int, exit_code: int = 137, *, event: bool = False) -> None:
        self.reads, self.n, self.exit_code, self.event = 0, n, exit_code, event

    def state(self, cid: str) -> ContainerState:
        self.reads += 1
        return ContainerState(False, self.exit_code, self.reads >= self.n, "")

    def oom_reported(self, cid: str, *, since: float) -> bool:
        return self.event


def _sandbox_on(daemon: _LateOomFlag) -> Sandbox:
    sandbox = Sandbox.__new__(Sandbox)
    sandbox.docker, sandbox.id, sandbox.started_at = daemon, "c1", 0.0  # type: ignore[assignment]
    return sandbox


async def test_an_oom_flag_set_after_the_exit_is_still_seen() -> None:
    daemon = _LateOomFlag(3)
    first = ContainerState(False, 137, False, "")
    assert (await _sandbox_on(daemon)._oom_settled(first)).oom_killed
    assert daemon.reads == 3


async def test_an_oom_event_counts_when_the_flag_never_comes() -> None:
    daemon = _LateOomFlag(10**6, event=True)
    first = ContainerState(False, 137, False, "")
    assert (await _sandbox_on(daemon)._oom_settled(first)).oom_killed
    assert daemon.reads == 0


async def test_a_plain_exit_is_not_waited_on_for_an_oom_flag() -> None:
    daemon = _LateOomFlag(1, exit_code=1, event=True)
    first = ContainerState(False, 1, False, "")
    assert await _sandbox_on(daemon)._oom_settled(first) == first
    assert daemon.reads == 0


def _without_oom_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's `OOMKilled` flag is never set, as dockerd 20.10 left it under load."""
    real = Docker.state
    monkeypatch.setattr(
        Docker, "state", lambda self, cid: replace(real(self, cid), oom_killed=False)
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_memory_stop_is_named_from_the_daemons_oom_event_when_its_flag_is_missing(
    runtime: Runtime,
    tracker: Tracker,
    tmp_path: Path,
    workspace: WorkspacePaths,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_oom_flag(monkeypatch)
    engine = tracker.track(
        ContainerEngine(runtime=runtime, pool_size=0, pool_dir=tmp_path / "pool")
    )
    grow = "held = []\nwhile True:\n    held.append(bytearray(16 * 2**20))"
    async with engine:
        result = await engine.run(make_plan(workspace, grow, memory_bytes=128 * 2**20))
    assert result.status == "memory"
    assert (result.limit or "").startswith("memory")
    assert tracker.leftovers(engine.instance) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_container_killed_from_outside_mid_run_is_not_called_a_memory_stop(
    runtime: Runtime, tracker: Tracker, tmp_path: Path, workspace: WorkspacePaths
) -> None:
    async with _one_warm_container(runtime, tracker, tmp_path / "pool") as (engine, running):
        code = "import time\nopen('up', 'w').close()\ntime.sleep(60)"
        run = asyncio.ensure_future(engine.run(make_plan(workspace, code)))
        deadline = time.monotonic() + WAIT_S
        while not any((tmp_path / "pool").rglob("up")):  # in the slot lent to the container
            assert not run.done() and time.monotonic() < deadline, "the code never started"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(_docker_kill, running)
        result = await run
    assert result.status != "memory" and result.limit is None
    assert tracker.leftovers(engine.instance) == []
