"""What came back from a sandbox: its `Evidence` for the shared judge, and the `RunResult`."""

from __future__ import annotations

import errno
import signal
from typing import Any

from .._files import DiskUsage
from .._judge import Evidence, MemorySign, judge
from .._types import Image, Limits, RunResult, Usage
from ._sandbox import Exchange

GVISOR_FATAL_EXIT = 2
"""The Go runtime's exit status when gVisor's sentry dies (e.g. it cannot make a thread)."""


def _memory(exchange: Exchange, reply: dict[str, Any], report: dict[str, Any]) -> MemorySign | None:
    state = exchange.state
    if (state is not None and state.oom_killed) or (reply.get("oom_kills") or 0) > 0:
        return "oom_kill"
    return "memory_error" if report.get("error_type") == "MemoryError" else None


def _processes_refused(reply: dict[str, Any], report: dict[str, Any]) -> bool:
    if (reply.get("pids_refused") or 0) > 0:
        return True
    # Inside gVisor no cgroup files are visible; a refused fork is an EAGAIN from the kernel.
    return reply.get("pids_refused") is None and report.get("error_type") == "BlockingIOError"


def evidence(exchange: Exchange, limits: Limits, *, runtime: str, workspace: DiskUsage) -> Evidence:
    """What one exchange shows, for `judge`; `workspace` is what the workspace holds after."""
    reply = exchange.collector.reply or {}
    report = reply.get("report") or {}
    error = report.get("error")
    died: str | None = None
    detail: str | None = None
    gvisor_died = False
    if exchange.ended not in ("reply", "timeout", "output_limit") or reply.get("server_error"):
        state = exchange.state
        code = None if state is None else state.exit_code
        said = (
            reply.get("server_error")
            or exchange.collector.diagnostics.decode("utf-8", "replace").strip()
        )
        died = f"container exit status {code}: {said}" if said else f"container exit status {code}"
        if runtime == "runsc" and code == GVISOR_FATAL_EXIT:
            gvisor_died, detail = True, "the gVisor sandbox died"
    elif reply.get("signal") not in (None, signal.SIGXCPU):
        number = reply["signal"]
        died = f"signal {signal.Signals(number).name if number in _SIGNALS else number}"
    exit_code = reply.get("exit_code")
    return Evidence(
        workspace_over=report.get("errno") == errno.EFBIG or workspace.over(limits),
        workspace_held=workspace,
        processes_refused=gvisor_died or _processes_refused(reply, report),
        memory=_memory(exchange, reply, report),
        output_flood=exchange.ended == "output_limit" or bool(reply.get("truncated")),
        deadline_passed=exchange.ended == "timeout",
        cpu_exceeded=reply.get("signal") == signal.SIGXCPU,
        died=died,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        error=error if isinstance(error, str) else None,
        detail=detail,
    )


_SIGNALS = {s.value for s in signal.Signals}


def to_result(
    exchange: Exchange,
    limits: Limits,
    *,
    runtime: str,
    files_written: tuple[str, ...],
    images: tuple[Image, ...],
    workspace: DiskUsage,
) -> RunResult:
    """The `RunResult` of one exchange; `workspace` is what the workspace holds after."""
    verdict = judge(evidence(exchange, limits, runtime=runtime, workspace=workspace), limits)
    collector = exchange.collector
    reply = collector.reply or {}
    report = reply.get("report") or {}
    stdout = bytes(collector.stdout).decode("utf-8", "replace")
    stderr = bytes(collector.stderr).decode("utf-8", "replace")
    value = report.get("value")
    return RunResult(
        status=verdict.status,
        stdout=stdout,
        stderr=verdict.with_notice(stderr),
        exit_code=verdict.exit_code,
        value=value if isinstance(value, str) and verdict.keeps_value else None,
        value_found=bool(report.get("value_found")) and verdict.keeps_value,
        error=verdict.error,
        limit=verdict.limit,
        truncated=tuple(dict.fromkeys([*collector.truncated, *(reply.get("truncated") or [])])),
        images=images,
        files_written=files_written,
        usage=Usage(
            wall_ms=exchange.wall_ms,
            cpu_ms=_number(reply.get("cpu_ms")),
            peak_memory_bytes=_integer(reply.get("peak_memory_bytes")),
            output_bytes=len(collector.stdout) + len(collector.stderr),
        ),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
