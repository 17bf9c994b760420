"""The runner's workspace budget check takes the engine's walk after the run
(`RunResult.workspace_usage`) instead of walking again, only when that walk still says what
the workspace holds and finds it within the budget: an over-budget walk is walked again (and
the workspace emptied), and fitting a result that saves its streams into the workspace drops
the engine's walk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from runner import Caller, Config, open_service
from runner._disk import settle_workspace
from sandboxes import (
    DiskUsage,
    ExecutionPlan,
    FakeEngine,
    HostIO,
    Limits,
    Program,
    RunResult,
    Usage,
    WorkspacePaths,
    disk_usage,
)
from tests.results import text_of

pytestmark = pytest.mark.anyio

T = TypeVar("T")

FILES_BUDGET = 3


class _NoIO(HostIO):
    """Host I/O that fails the test when used: the engine's walk had to be enough."""

    async def call(self, grant: str, work: Callable[[], T]) -> T:
        raise AssertionError("the runner walked the workspace again")


def _plan(files: Path) -> ExecutionPlan:
    return ExecutionPlan(
        decision_id="d",
        engine="fake",
        program=Program("code", "pass"),
        limits=Limits(workspace_bytes=1 << 20, workspace_files=FILES_BUDGET),
        workspace=WorkspacePaths(files=files, site=files.parent / "site"),
        grant="g",
        session_id="s",
    )


def _result(held: DiskUsage | None) -> RunResult:
    return RunResult("ok", "", "", 0, Usage(wall_ms=1.0), workspace_usage=held)


async def test_a_walk_within_the_budget_stands_for_the_runners(tmp_path: Path) -> None:
    recorded: list[DiskUsage] = []
    held = DiskUsage(4096, 1)
    result = _result(held)
    settled = await settle_workspace(_plan(tmp_path), result, record=recorded.append, io=_NoIO())
    assert settled is result
    assert recorded == [held]


async def test_a_walk_over_the_budget_is_walked_again_and_the_workspace_emptied(
    tmp_path: Path,
) -> None:
    for index in range(FILES_BUDGET + 2):
        (tmp_path / f"f{index}").write_text("x")
    recorded: list[DiskUsage] = []
    result = _result(DiskUsage(0, FILES_BUDGET + 1))
    settled = await settle_workspace(_plan(tmp_path), result, record=recorded.append)
    assert settled.status == "killed"
    assert settled.limit is not None and "emptied" in settled.limit
    assert disk_usage(tmp_path).files == 0
    assert recorded == [DiskUsage(0, 0)]


async def test_an_incomplete_walk_is_walked_again(tmp_path: Path) -> None:
    (tmp_path / "kept").write_text("x")
    recorded: list[DiskUsage] = []
    result = _result(DiskUsage(0, 0, complete=False))
    settled = await settle_workspace(_plan(tmp_path), result, record=recorded.append)
    assert settled is result  # the runner's own walk finds it within the budget
    assert recorded == [disk_usage(tmp_path)]


async def test_saved_streams_are_counted_though_the_engine_walked_an_empty_workspace(
    tmp_path: Path,
) -> None:
    """The engine walked before fitting saved the long stdout into the workspace: its walk
    no longer says what the workspace holds, so the runner walks it and finds it over."""

    def long_output(plan: ExecutionPlan) -> RunResult:
        return RunResult("ok", "y" * 8192, "", 0, Usage(wall_ms=1.0), workspace_usage=DiskUsage())

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\ntools:\n"
        "  run_python_code:\n"
        "    quotas: {workspace_files: 1}\n"
        "server: {result_text_bytes: 1024}\n"
    )
    config = Config(
        policy_path=policy, state_dir=tmp_path / "state", tool_sets=("python-code-runner",)
    )
    engine = FakeEngine(long_output)
    async with open_service(config, engines={"wasm": engine}) as service:
        result = await service.call_tool("run_python_code", {"code": "pass"}, Caller())
        files = engine.plans[0].workspace.files
        assert "emptied" in text_of(result)
        assert disk_usage(files).files == 0
