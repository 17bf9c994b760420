"""Saved interpreters on the container engine: gVisor checkpoints a session's interpreter
container into a folder and resumes it in new containers (snapshots, forks, sessions paused to
disk); runc (no working CRIU) refuses. Needs dockerd with experimental features
(`scripts/docker-setup.sh` starts it so)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandboxes import (
    CapabilityMissing,
    ExecutionPlan,
    StateImageRefused,
    WorkspacePaths,
    session_key,
)
from sandboxes.container import ContainerEngine
from sandboxes.container._docker import Docker
from tests.conftest import IN_CI
from tests.container.conftest import Tracker, make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.container]

MEMORY = 256 << 20
"""Every plan's memory limit: a resumed container must have the saved one's shape."""


@pytest.fixture(scope="module")
def checkpoints(docker_api: Docker) -> None:
    """dockerd's checkpoint API is experimental: skipped without it, a failure in CI."""
    if not docker_api.info().get("ExperimentalBuild"):
        if IN_CI:
            pytest.fail("dockerd must run with --experimental (scripts/docker-setup.sh)")
        pytest.skip("dockerd runs without --experimental: no checkpoint API")


@pytest.fixture(scope="module")
async def gvisor(
    checkpoints: None, tracker: Tracker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ContainerEngine]:
    pools = tmp_path_factory.mktemp("saved-pool")
    engine = tracker.track(ContainerEngine(runtime="runsc", pool_size=1, pool_dir=pools / "p"))
    async with engine:
        yield engine


@pytest.fixture(scope="module")
async def saved(gvisor: ContainerEngine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a gVisor interpreter in which `x = 41` ran."""
    root = tmp_path_factory.mktemp("saved")
    ran = await gvisor.run(plan(workspace_in(root / "ws"), "x = 41", session="origin"))
    assert (ran.status, ran.state) == ("ok", "new")
    folder = root / "x41"
    folder.mkdir()
    assert await gvisor.save_state(session_key("local", "origin"), folder) is True
    return folder


def workspace_in(root: Path) -> WorkspacePaths:
    files, site = root / "files", root / "site"
    files.mkdir(parents=True, mode=0o700)
    site.mkdir(mode=0o700)
    return WorkspacePaths(files, site)


def plan(workspace: WorkspacePaths, source: str, *, session: str, **limits: Any) -> ExecutionPlan:
    """A persistent `run_python_code` plan of grant `local`."""
    made = make_plan(workspace, source, session=session, memory_bytes=MEMORY, **limits)
    program = replace(made.program, final_expression=True)
    return replace(made, state="persistent", program=program)


def fresh_session() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


async def test_a_saved_interpreter_resumes_in_another_session_and_the_original_goes_on(
    gvisor: ContainerEngine, saved: Path, tmp_path: Path
) -> None:
    other = fresh_session()
    await gvisor.load_state(session_key("local", other), "local", saved)
    resumed = await gvisor.run(plan(workspace_in(tmp_path / "b"), "x + 1", session=other))
    original = await gvisor.run(plan(workspace_in(tmp_path / "a"), "x", session="origin"))
    assert (resumed.status, resumed.value, resumed.state, resumed.stderr) == (
        "ok",
        "42",
        "kept",
        "",
    )
    assert (original.value, original.state) == ("41", "kept")


async def test_forks_of_one_folder_are_independent(
    gvisor: ContainerEngine, saved: Path, tmp_path: Path
) -> None:
    forks = [fresh_session() for _ in range(3)]
    spaces = [workspace_in(tmp_path / fork) for fork in forks]
    for fork in forks:
        await gvisor.load_state(session_key("local", fork), "local", saved)
    resumed = await asyncio.gather(  # restored at once, from one checkpoint
        *(gvisor.run(plan(ws, "x", session=f)) for ws, f in zip(spaces, forks, strict=True))
    )
    changed = await gvisor.run(plan(spaces[0], "x = 100\nimport json\nx", session=forks[0]))
    seen = [
        await gvisor.run(plan(ws, "x, 'json' in globals()", session=f))
        for ws, f in zip(spaces, forks, strict=True)
    ]
    assert [(r.value, r.state) for r in resumed] == [("41", "kept")] * 3
    assert changed.value == "100"
    assert [r.value for r in seen] == ["(100, True)", "(41, False)", "(41, False)"]
    for fork in forks:
        await gvisor.end_session(session_key("local", fork))


async def test_a_new_engine_resumes_a_folder_saved_by_another(
    saved: Path, tracker: Tracker, tmp_path: Path
) -> None:
    engine = tracker.track(ContainerEngine(runtime="runsc", pool_size=0, pool_dir=tmp_path / "p"))
    async with engine:
        await engine.load_state(session_key("local", "later"), "local", saved)
        resumed = await engine.run(plan(workspace_in(tmp_path), "x + 1", session="later"))
    assert (resumed.value, resumed.state) == ("42", "kept")
    assert tracker.leftovers(engine.instance) == []


async def test_a_folder_of_another_runtime_image_or_nothing_is_refused(
    gvisor: ContainerEngine, saved: Path, tmp_path: Path
) -> None:
    manifest = json.loads((saved / "manifest.json").read_text())
    refused: list[StateImageRefused] = []
    for name, changes in (("runc", {"runtime": "runc"}), ("image", {"image_id": "sha256:0"})):
        folder = tmp_path / name
        (folder / "interpreter").mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({**manifest, **changes}))
        with pytest.raises(StateImageRefused) as caught:
            await gvisor.load_state(session_key("local", name), "local", folder)
        refused.append(caught.value)
    with pytest.raises(StateImageRefused) as empty:
        await gvisor.load_state(session_key("local", "empty"), "local", tmp_path)
    assert [r.engine for r in refused] == ["container:runsc"] * 2
    assert "runtime='runc'" in refused[0].reason and "image_id='sha256:0'" in refused[1].reason
    assert "manifest.json" in empty.value.reason


async def test_an_idle_interpreter_reclaimed_for_room_is_paused_to_disk_and_resumes(
    checkpoints: None, tracker: Tracker, tmp_path: Path
) -> None:
    engine = tracker.track(
        ContainerEngine(runtime="runsc", pool_size=0, pool_dir=tmp_path / "p", max_sessions=1)
    )
    one, two = workspace_in(tmp_path / "one"), workspace_in(tmp_path / "two")
    async with engine:
        await engine.run(plan(one, "k = 'one'", session="a"))
        other = await engine.run(plan(two, "k = 'two'\nk", session="b"))
        paused = engine.pool_stats()["paused"]
        back = await engine.run(plan(one, "k", session="a"))
        assert engine.live_sessions() == (session_key("local", "a"),)
        assert engine.pool_stats()["paused"] == 1  # b, paused to give a its room back
    assert (other.value, paused) == ("'two'", 1)
    assert (back.value, back.state, back.state_note) == ("'one'", "kept", None)
    assert tracker.leftovers(engine.instance) == []
    assert not any((tmp_path / "p-saved").iterdir())


async def test_limits_are_enforced_after_a_resume(
    gvisor: ContainerEngine, saved: Path, tmp_path: Path
) -> None:
    ws = workspace_in(tmp_path)
    hog, spin = fresh_session(), fresh_session()
    for session in (hog, spin):
        await gvisor.load_state(session_key("local", session), "local", saved)
    grown = "hog = []\nwhile True:\n    hog.append(b'x' * (16 << 20))\n"
    eaten = await gvisor.run(plan(ws, grown, session=hog))
    spun = await gvisor.run(plan(ws, "while True: pass", session=spin, wall_timeout_s=2.0))
    assert (eaten.status, eaten.state) == ("memory", "kept")
    assert (spun.status, spun.state) == ("timeout", "kept")


async def test_other_fixed_limits_lose_the_saved_interpreter_and_say_why(
    gvisor: ContainerEngine, saved: Path, tmp_path: Path
) -> None:
    session = fresh_session()
    await gvisor.load_state(session_key("local", session), "local", saved)
    bigger = plan(workspace_in(tmp_path), "'x' in globals()", session=session)
    ran = await gvisor.run(replace(bigger, limits=replace(bigger.limits, memory_bytes=2 * MEMORY)))
    assert (ran.value, ran.state) == ("False", "lost")
    assert ran.state_note == "its saved state could not be resumed: the limits changed"
    await gvisor.end_session(session_key("local", session))


async def test_runc_refuses_to_save_or_load(tracker: Tracker, tmp_path: Path) -> None:
    engine = tracker.track(ContainerEngine(runtime="runc", pool_size=0, pool_dir=tmp_path / "p"))
    assert engine.capabilities.snapshots is False
    async with engine:
        # a session that keeps no interpreter here has nothing to save: no refusal
        assert await engine.save_state(session_key("local", "s"), tmp_path) is False
        ran = await engine.run(plan(workspace_in(tmp_path / "ws"), "x = 41", session="s"))
        assert (ran.status, ran.state) == ("ok", "new")
        with pytest.raises(CapabilityMissing) as saving:
            await engine.save_state(session_key("local", "s"), tmp_path)
        with pytest.raises(CapabilityMissing) as loading:
            await engine.load_state(session_key("local", "s"), "local", tmp_path)
    assert saving.value.engine == loading.value.engine == "container:runc"
    assert saving.value.capabilities == ("snapshots",)
