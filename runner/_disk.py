"""The workspace budget after every run, the same on every engine, decided in one place.

After a run the runner measures the session's workspace once, by descriptor (allocated bytes
and inodes, `sandboxes.disk_usage`). When it is over its budget (`Limits.workspace_bytes` or
`Limits.workspace_files`), or the engine says it stopped the run for its workspace, the run is
reported `killed` with the workspace limit and **the session's workspace is emptied** (every
file and folder in it, removed by descriptor however deep; installed packages stay). The
engines' own watchdogs stop a run early; this is what keeps the host's disk within the budget
plus what a run can write between two looks of a watchdog (see SECURITY.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from sandboxes import (
    HOST_IO,
    DiskUsage,
    ExecutionPlan,
    HostIO,
    HostIOBusy,
    HostIOTimeout,
    RunResult,
    disk_usage,
    empty_folder,
    stopped_for_workspace,
    workspace_limit,
)

logger = logging.getLogger("sandgate.disk")

EMPTIED_NOTE = "the session's workspace was emptied"


async def settle_workspace(
    plan: ExecutionPlan,
    result: RunResult,
    *,
    end_session: Callable[[], Awaitable[object]] | None = None,
    record: Callable[[DiskUsage], None] | None = None,
    io: HostIO = HOST_IO,
) -> RunResult:
    """`result`, or — when the run left the workspace over its budget — `result` as `killed`
    by the workspace limit, after emptying the workspace and calling `end_session` (which
    ends the engine's state of the session: a Pyodide interpreter holds its own copy of the
    files), the text says so. `record` is told what the workspace occupies after all that.

    The engine's own walk after the run (`result.workspace_usage`) stands for the runner's
    when it finds the workspace within its budget (no second walk, no thread); any other
    case is walked here, as an engine that did not walk it is."""
    limits, files = plan.limits, plan.workspace.files
    held = result.workspace_usage
    if held is not None and not held.over(limits) and not stopped_for_workspace(result.limit):
        if record is not None:
            record(held)
        return result
    try:
        usage: DiskUsage = await io.call(
            plan.grant, lambda: disk_usage(files, stop_after_files=limits.workspace_files)
        )
    except (HostIOBusy, HostIOTimeout) as exc:
        logger.warning("could not measure the workspace of session %s: %s", plan.session_id, exc)
        return result
    if not usage.over(limits) and not stopped_for_workspace(result.limit):
        if record is not None:
            record(usage)
        return result
    try:
        left = await io.call(plan.grant, lambda: empty_folder(files))
    except (HostIOBusy, HostIOTimeout) as exc:
        logger.error("could not empty the workspace of session %s: %s", plan.session_id, exc)
        left = usage
    if record is not None:
        record(left)
    if end_session is not None:
        await end_session()
    if left.files:
        logger.error(
            "the workspace of session %s still holds %s after emptying",
            plan.session_id,
            left.describe(),
        )
    limit = f"{workspace_limit(limits)}; {EMPTIED_NOTE}"  # what it held: in stderr
    logger.info("session %s: %s", plan.session_id, limit)
    stderr = result.stderr
    if stderr and not stderr.endswith("\n"):
        stderr += "\n"
    stderr += (
        f"sandgate: stopped: the workspace passed its budget of {limits.workspace_bytes} bytes "
        f"of disk and {limits.workspace_files} files (it held {usage.describe()}); "
        f"{EMPTIED_NOTE}: every file the session had is gone (and its interpreter, where "
        "the engine keeps one, was restarted)\n"
    )
    return replace(
        result,
        status="killed",
        limit=limit,
        stderr=stderr,
        error=result.error,
        images=(),
        files_written=(),
    )
