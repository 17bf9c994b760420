"""Judges what came back from a sandbox: which status, which limit, and the `RunResult`."""

from __future__ import annotations

import errno
import signal
from typing import Any

from .._types import Image, Limits, RunResult, Status, Usage
from ._sandbox import Exchange

SIGKILL_EXIT = 128 + signal.SIGKILL
GVISOR_FATAL_EXIT = 2
"""The Go runtime's exit status when gVisor's sentry dies (e.g. it cannot make a thread)."""


def _memory_evidence(exchange: Exchange, reply: dict[str, Any], report: dict[str, Any]) -> bool:
    state = exchange.state
    if state is not None and state.oom_killed:
        return True
    if (reply.get("oom_kills") or 0) > 0:
        return True
    return report.get("error_type") == "MemoryError"


def _process_evidence(reply: dict[str, Any], report: dict[str, Any]) -> bool:
    if (reply.get("pids_refused") or 0) > 0:
        return True
    # Inside gVisor no cgroup files are visible; a refused fork is an EAGAIN from the kernel.
    return reply.get("pids_refused") is None and report.get("error_type") == "BlockingIOError"


def judge(
    exchange: Exchange, limits: Limits, *, runtime: str
) -> tuple[Status, str | None, str | None]:
    """The status, the limit in words and the error line of one exchange."""
    reply = exchange.collector.reply or {}
    report = reply.get("report") or {}
    error: str | None = report.get("error")
    memory = f"memory {limits.memory_bytes} bytes"
    wall = f"wall time {limits.wall_timeout_s:g} s"
    if exchange.ended == "timeout":
        return "timeout", wall, error
    if exchange.ended == "output_limit" or reply.get("truncated"):
        return "output_limit", f"output {limits.output_bytes} bytes per stream", error
    if _memory_evidence(exchange, reply, report):
        return "memory", memory, error or "MemoryError: the sandbox ran out of memory"
    if reply.get("signal") == signal.SIGXCPU:
        return "timeout", f"CPU time {limits.cpu_time_s:g} s", error
    if exchange.ended != "reply" or reply.get("server_error"):
        state = exchange.state
        code = None if state is None else state.exit_code
        said = (
            reply.get("server_error")
            or exchange.collector.diagnostics.decode("utf-8", "replace").strip()
        )
        if runtime == "runsc" and code == GVISOR_FATAL_EXIT:
            return "killed", f"processes {limits.processes} (the gVisor sandbox died)", error
        detail = f"the sandbox ended without a report (container exit status {code})"
        return "killed", None, f"{detail}: {said}" if said else detail
    if reply.get("signal") is not None:
        name = signal.Signals(reply["signal"]).name if reply["signal"] in _SIGNALS else "?"
        return "killed", None, error or f"the program was killed by signal {name}"
    ok = reply.get("exit_code") == 0 and report.get("error") is None
    if not ok and _process_evidence(reply, report):
        return "killed", f"processes {limits.processes} (a fork was refused)", error
    return ("ok" if ok else "error"), None, error


_SIGNALS = {s.value for s in signal.Signals}


def to_result(
    exchange: Exchange,
    limits: Limits,
    *,
    runtime: str,
    files_written: tuple[str, ...],
    images: tuple[Image, ...],
    workspace_bytes: int,
) -> RunResult:
    """The `RunResult` of one exchange; `workspace_bytes` is what the workspace holds after."""
    status, limit, error = judge(exchange, limits, runtime=runtime)
    collector = exchange.collector
    reply = collector.reply or {}
    report = reply.get("report") or {}
    over = _workspace_note(limits, report, workspace_bytes)
    if over is not None:
        limit = f"{limit}; {over}" if limit else over
    stdout = bytes(collector.stdout).decode("utf-8", "replace")
    stderr = bytes(collector.stderr).decode("utf-8", "replace")
    value = report.get("value")
    exit_code = reply.get("exit_code")
    return RunResult(
        status=status,
        stdout=stdout,
        stderr=stderr,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        value=value if isinstance(value, str) else None,
        value_found=bool(report.get("value_found")),
        error=error,
        limit=limit,
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


def _workspace_note(limits: Limits, report: dict[str, Any], held: int) -> str | None:
    """Words for the workspace budget when the run hit it (a refused write) or overran it
    (many files, each under the per-file cap the child runs with)."""
    if report.get("errno") == errno.EFBIG:
        return f"workspace {limits.workspace_bytes} bytes (a file would have passed it)"
    if held > limits.workspace_bytes:
        return f"workspace {limits.workspace_bytes} bytes (the workspace now holds {held})"
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
