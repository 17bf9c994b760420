"""What a wasm run asks a worker, and what the engine makes of the answer: shared by runs in a
fresh guest (`_engine`) and in a persistent session's guest (`_persistent`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from .._files import DiskUsage, images_among, report_dropped_links
from .._judge import Evidence, MemorySign, judge
from .._lending import MountsBefore, mount_budgets, mount_changes
from .._relay import egress_fields
from .._types import ExecutionPlan, HostMount, Image, Limits, RunResult, Usage
from ._measure import dropped_links, has_images, measured
from ._pool import WorkerDied

BACKSTOP = "the guest passed its deadline and the host backstop killed its worker"

Mounted = MountsBefore | None
"""What `_lending.mounts_before` saw of the read-write mounts (None: there are none)."""


def run_request(
    plan: ExecutionPlan,
    mounts: tuple[HostMount, ...],
    mounted: Mounted,
    mpl_dir: Path,
    *,
    may_move: bool,
) -> dict[str, Any]:
    """The worker request that runs `plan`."""
    limits = plan.limits
    request: dict[str, Any] = {
        "kind": plan.program.kind,
        "source": plan.program.source,
        "variable": plan.program.variable_to_return,
        "final_expression": plan.program.final_expression,
        "stdin": plan.program.stdin.decode("utf-8", "surrogateescape"),
        "files": str(plan.workspace.files),
        "site": str(plan.workspace.site),
        "mplconfig": str(mpl_dir),
        "deadline_s": limits.wall_timeout_s,
        "memory_bytes": limits.memory_bytes,
        "output_bytes": limits.output_bytes,
        "fuel": limits.fuel,
        "workspace_bytes": limits.workspace_bytes,
        "workspace_files": limits.workspace_files,
        "may_move": may_move,
    }
    if limits.network == "egress" and plan.egress is not None:
        request["egress"] = egress_fields(plan.egress)
    request["mounts"] = [[m.name, str(m.host), m.read_only] for m in mounts]
    if mounted is not None:
        budgets = mount_budgets(mounts, mounted, limits)
        request["mount_budgets"] = [[str(f), b, n] for f, b, n in budgets]
    return request


async def settle(
    answer: dict[str, Any],
    plan: ExecutionPlan,
    mounts: tuple[HostMount, ...],
    mounted: Mounted,
) -> RunResult:
    """The `RunResult` of a worker's answer: what the run wrote (workspace, as the worker
    measured it, then read-write mounts), its images, and the verdict on how it ended.

    Raises:
        WorkerDied: the answer does not say what the run wrote (`_measure`).
    """
    limits = plan.limits
    try:
        written, held, over = measured(answer)
        dropped = dropped_links(answer)
    except ValueError as exc:
        raise WorkerDied(f"the wasm worker's answer is not understood: {exc}") from None
    report_dropped_links(plan.workspace, dropped)
    images: tuple[Image, ...] = ()
    if has_images(written):  # read here, off the event loop, only when there are any
        images = await asyncio.to_thread(images_among, plan.workspace.files, written)
    if mounted is not None:  # guest paths /mnt/NAME/…, after the workspace's
        done = await asyncio.to_thread(
            mount_changes, mounts, mounted, limits, images_so_far=len(images)
        )
        written, images = written + done.touched, images + done.images
        over = over if over is not None else done.over
    if answer.get("workspace_over") is None:  # a run shorter than the watchdog's first look
        answer["workspace_over"] = over
    return _result(answer, plan, written, images, held)


def backstop_result(limits: Limits, began: float) -> RunResult:
    """A run whose guest did not stop at its deadline, so the host killed its worker."""
    verdict = judge(
        Evidence(deadline_passed=True, died="its worker was killed", detail=BACKSTOP), limits
    )
    return RunResult(
        status=verdict.status,
        stdout="",
        stderr=verdict.notice(),
        exit_code=None,
        error=verdict.error,
        limit=verdict.limit,
        usage=Usage(wall_ms=(time.perf_counter() - began) * 1000),
    )


def _evidence(answer: dict[str, Any]) -> Evidence:
    """What the worker saw of one guest, for `judge`."""
    trapped: str | None = answer.get("trapped")
    report = answer.get("report") or {}
    memory: MemorySign | None = None
    if trapped is not None and "memory" in trapped.lower():
        memory = "memory_trap"
    elif report.get("error_type") == "MemoryError":
        memory = "memory_error"
    died = None  # "cancelled" comes from the workspace watchdog, which sets workspace_over
    if trapped is not None and memory is None and trapped not in ("deadline", "out of fuel"):
        died = f"the guest trapped: {trapped}"
    exit_code = answer.get("exit_code")
    return Evidence(
        workspace_over=answer.get("workspace_over") is not None,
        memory=memory,
        output_flood=bool(answer.get("truncated")),
        deadline_passed=trapped == "deadline",
        fuel_exhausted=trapped == "out of fuel",
        died=died,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        error=report.get("error"),
    )


def _result(
    answer: dict[str, Any],
    plan: ExecutionPlan,
    written: tuple[str, ...],
    images: Any,
    held: DiskUsage,
) -> RunResult:
    verdict = judge(_evidence(answer), plan.limits)
    report = answer.get("report") or {}
    stdout, stderr = answer.get("stdout", ""), answer.get("stderr", "")
    return RunResult(
        status=verdict.status,
        stdout=stdout,
        stderr=verdict.with_notice(stderr),
        exit_code=verdict.exit_code,
        value=report.get("value") if verdict.keeps_value else None,
        value_found=bool(report.get("value_found")) and verdict.keeps_value,
        error=verdict.error,
        limit=verdict.limit,
        truncated=tuple(answer.get("truncated") or ()),
        images=images,
        files_written=written,
        usage=Usage(
            wall_ms=float(answer.get("wall_ms") or 0.0),
            cpu_ms=answer.get("cpu_ms"),
            peak_memory_bytes=answer.get("peak_memory_bytes"),
            fuel=answer.get("fuel_used"),
            output_bytes=len(stdout.encode()) + len(stderr.encode()),
        ),
        workspace_usage=held,
    )
