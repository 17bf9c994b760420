"""The lifecycle part of the engine contract, on every engine: pool figures (also in the
server's), session end, and `EngineClosed` from `run` and `start` after `aclose`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from sandboxes import (
    CATALOG,
    Engine,
    EngineClosed,
    EngineSettings,
    ExecutionPlan,
    Limits,
    Program,
    WorkspacePaths,
    session_key,
)

from ._harness import ENGINE_KEYS, GRANT, Bench

pytestmark = pytest.mark.anyio

START_BOUND_S = 240.0
"""How long a fresh engine may take to start (a Pyodide pool on 2 cores)."""
CLOSED_BOUND_S = 30.0
"""How soon a closed engine must refuse: at once, never by waiting on a dead pool."""


async def test_pool_stats_are_counts_the_server_shows(bench: Bench) -> None:
    stats = bench.engine.pool_stats()
    assert isinstance(stats, Mapping) and stats
    assert all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in stats.items()), stats
    shown = bench.service.pool_stats()[ENGINE_KEYS[bench.profile]]
    assert set(shown) == set(stats)


async def test_end_session_says_whether_it_kept_anything(bench: Bench, session: str) -> None:
    await bench.call("run_code", {"code": "print('used')"}, session=session)
    ended = await bench.engine.end_session(session_key(GRANT, session))
    never = await bench.engine.end_session(session_key(GRANT, "never-seen"))
    assert type(ended) is bool
    assert never is False


async def test_a_closed_engine_refuses_run_and_start(
    bench: Bench, track: Callable[[Engine], Engine], tmp_path: Path
) -> None:
    entry = CATALOG[ENGINE_KEYS[bench.profile]]
    settings = EngineSettings(
        workers=1, state_dir=tmp_path / "state", progress=logging.getLogger(__name__).info
    )
    fresh = track(entry.make(settings))
    try:
        async with asyncio.timeout(START_BOUND_S):
            await fresh.start()
    finally:
        await fresh.aclose()
    files, site = tmp_path / "files", tmp_path / "site"
    files.mkdir(mode=0o700)
    site.mkdir(mode=0o700)
    plan = ExecutionPlan(
        decision_id="conformance-closed",
        engine=entry.kind,
        program=Program("code", "print('ran')"),
        limits=Limits(wall_timeout_s=5.0),
        workspace=WorkspacePaths(files, site),
        session_id="closed",
        runtime=entry.runtime,
    )
    assert not fresh.ready
    async with asyncio.timeout(CLOSED_BOUND_S):
        with pytest.raises(EngineClosed):
            await fresh.run(plan)
        with pytest.raises(EngineClosed):
            await fresh.start()
