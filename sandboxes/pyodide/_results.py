"""Turn a guest's (untrusted) report, or the way its process ended, into a `RunResult`."""

from __future__ import annotations

import signal
import time
from typing import Any

from .._types import Image, Limits, RunResult, Status, Usage
from ._jail import cpu_seconds
from ._process import DenoProcess

RESTART_NOTE = "the session's interpreter was stopped; its next call starts a fresh one"


class Meter:
    """Wall time, CPU time (all threads, from /proc) and peak memory (cgroup) of one run."""

    def __init__(self, proc: DenoProcess) -> None:
        self._proc = proc
        self._cpu0 = cpu_seconds(proc.pid)
        self._began = time.perf_counter()

    def usage(self, report: dict[str, Any] | None = None) -> Usage:
        cpu1 = cpu_seconds(self._proc.pid)
        peak = self._proc.cgroup.peak_bytes()
        if peak is None and report is not None:
            wasm = report.get("wasm_memory_bytes")
            peak = wasm if isinstance(wasm, int) else None
        cpu0 = self._cpu0
        return Usage(
            wall_ms=(time.perf_counter() - self._began) * 1000,
            cpu_ms=None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000,
            peak_memory_bytes=peak,
        )


def cap_text(text: object, limit: int) -> tuple[str, bool]:
    """`text` (if a str) cut to `limit` UTF-8 bytes, and whether it was cut."""
    if not isinstance(text, str):
        return "", False
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def from_report(
    answer: dict[str, Any],
    limits: Limits,
    *,
    stdout: str,
    stderr: str,
    usage: Usage,
    written: tuple[str, ...],
    images: tuple[Image, ...],
    workspace_over: bool,
) -> RunResult:
    """The result of a run the guest reported on. Every field is checked, nothing trusted."""
    stdout, out_cut = cap_text(stdout, limits.output_bytes)
    stderr, err_cut = cap_text(stderr, limits.output_bytes)
    claimed = answer.get("truncated")
    streams = claimed if isinstance(claimed, list) else []
    truncated = {s for s in streams if s in ("stdout", "stderr")}
    if out_cut:
        truncated.add("stdout")
    if err_cut:
        truncated.add("stderr")
    code = answer.get("exit_code")
    exit_code = code if isinstance(code, int) and not isinstance(code, bool) else 1
    error = _opt_str(answer.get("error"))
    status: Status
    limit: str | None = None
    if answer.get("error_type") == "MemoryError":
        status, limit = "memory", f"memory {limits.memory_bytes} bytes"
    elif truncated:
        status, limit = "output_limit", f"output {limits.output_bytes} bytes per stream"
    elif exit_code == 0 and not answer.get("fatal"):
        status = "ok"
    else:
        status = "error"
    if answer.get("fatal"):
        stderr += f"\nsandgate: the Pyodide interpreter failed; {RESTART_NOTE}\n"
    if workspace_over:
        limit = (limit + "; " if limit else "") + (
            f"workspace {limits.workspace_bytes} bytes per folder (some files were not saved)"
        )
    value = _opt_str(answer.get("value"))
    return RunResult(
        status=status,
        stdout=stdout,
        stderr=stderr,
        exit_code=exit_code,
        usage=usage,
        value=value,
        value_found=bool(answer.get("value_found")) and value is not None,
        error=error if status != "ok" else None,
        limit=limit,
        truncated=tuple(sorted(truncated)),
        images=images,
        files_written=written,
    )


def from_death(
    returncode: int | None,
    *,
    oom_killed: bool,
    stderr_tail: str,
    limits: Limits,
    usage: Usage,
    stdout: str = "",
    stderr: str = "",
) -> RunResult:
    """The result of a run whose process ended before answering."""
    status: Status
    if oom_killed or "out of memory" in stderr_tail.lower() or "heap limit" in stderr_tail:
        status, limit = "memory", f"memory {limits.memory_bytes} bytes"
    elif returncode == -signal.SIGXCPU:
        cpu = limits.cpu_time_s
        status = "timeout"
        limit = f"CPU time {cpu:g} s" if cpu is not None else "CPU time backstop"
    else:
        status = "killed"
        how = f"signal {-returncode}" if returncode and returncode < 0 else f"exit {returncode}"
        limit = f"the sandbox process ended ({how})"
    return _stopped(status, limit, limits, usage, stdout, stderr)


def timed_out(limits: Limits, usage: Usage, *, stdout: str = "", stderr: str = "") -> RunResult:
    """The result of a run stopped at its wall-clock deadline (the process was killed)."""
    limit = f"wall time {limits.wall_timeout_s:g} s"
    return _stopped("timeout", limit, limits, usage, stdout, stderr)


def _stopped(
    status: Status, limit: str, limits: Limits, usage: Usage, stdout: str, stderr: str
) -> RunResult:
    """A run the host stopped: what it printed until then, and why it stopped."""
    out, out_cut = cap_text(stdout, limits.output_bytes)
    err, err_cut = cap_text(stderr, limits.output_bytes)
    if err and not err.endswith("\n"):
        err += "\n"
    truncated = tuple(n for n, cut in (("stderr", err_cut), ("stdout", out_cut)) if cut)
    return RunResult(
        status=status,
        stdout=out,
        stderr=err + f"sandgate: stopped: {limit}; {RESTART_NOTE}\n",
        exit_code=None,
        usage=usage,
        limit=f"{limit}; {RESTART_NOTE}",
        truncated=truncated,
    )
