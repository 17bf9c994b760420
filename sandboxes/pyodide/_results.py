"""Turn a guest's (untrusted) report, or the way its process ended, into a `RunResult`."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from typing import Any

from .._judge import Evidence, MemorySign, judge
from .._types import Image, Limits, RunResult, Usage
from ._jail import cpu_seconds
from ._process import DenoProcess

RESTART_NOTE = "the session's interpreter was stopped; its next call starts a fresh one"
"""Said after a stopped run of a persistent session (a fresh run's process ends anyway)."""


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
    lost: str | None = None,
    persistent: bool = True,
) -> RunResult:
    """The result of a run the guest reported on. Every field is checked, nothing trusted.

    `workspace_over`: some files were not written back (for the workspace budget, or because
    the copy failed). `lost`: why the interpreter was stopped after its report, if it was.
    `persistent`: the interpreter served a session (a stop is then worth saying).
    """
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
    detail = None
    restart = f"; {RESTART_NOTE}" if persistent else ""
    if answer.get("fatal"):
        detail = f"the Pyodide interpreter failed{restart}"
    elif lost is not None:
        detail = f"{lost}{restart}"
    elif workspace_over:
        detail = "the files that would have passed it were not saved"
    verdict = judge(
        Evidence(
            workspace_over=workspace_over,
            memory="memory_error" if answer.get("error_type") == "MemoryError" else None,
            output_flood=bool(truncated),
            exit_code=1 if answer.get("fatal") else exit_code,
            error=_opt_str(answer.get("error")),
            detail=detail,
        ),
        limits,
    )
    value = _opt_str(answer.get("value"))
    return RunResult(
        status=verdict.status,
        stdout=stdout,
        stderr=verdict.with_notice(stderr),
        exit_code=verdict.exit_code,
        usage=usage,
        value=value if verdict.keeps_value else None,
        value_found=bool(answer.get("value_found")) and value is not None and verdict.keeps_value,
        error=verdict.error,
        limit=verdict.limit,
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
    cut: tuple[str, ...] = (),
    persistent: bool = True,
) -> RunResult:
    """The result of a run whose process ended before answering; `cut`: the streams the host
    said passed the cap; `persistent`: the process served a session."""
    memory: MemorySign | None = None
    if oom_killed:
        memory = "oom_kill"
    elif "out of memory" in stderr_tail.lower() or "heap limit" in stderr_tail:
        memory = "js_heap"
    how = f"signal {-returncode}" if returncode and returncode < 0 else f"exit {returncode}"
    evidence = Evidence(
        memory=memory,
        cpu_exceeded=returncode == -signal.SIGXCPU,
        died=f"the Deno process ended ({how})",
        detail=RESTART_NOTE if persistent else None,
    )
    return _stopped(evidence, limits, usage, stdout, stderr, cut)


def timed_out(
    limits: Limits,
    usage: Usage,
    *,
    stdout: str = "",
    stderr: str = "",
    cut: tuple[str, ...] = (),
    persistent: bool = True,
) -> RunResult:
    """The result of a run stopped at its wall-clock deadline (the process was killed);
    `cut`: the streams the host said passed the cap; `persistent`: the process served a
    session."""
    evidence = Evidence(deadline_passed=True, detail=RESTART_NOTE if persistent else None)
    return _stopped(evidence, limits, usage, stdout, stderr, cut)


def _stopped(
    evidence: Evidence,
    limits: Limits,
    usage: Usage,
    stdout: str,
    stderr: str,
    cut: tuple[str, ...],
) -> RunResult:
    """A run the host stopped: what it printed until then, and the verdict on it."""
    out, out_cut = cap_text(stdout, limits.output_bytes)
    err, err_cut = cap_text(stderr, limits.output_bytes)
    flooded = {"stdout": out_cut or "stdout" in cut, "stderr": err_cut or "stderr" in cut}
    truncated = tuple(name for name in ("stderr", "stdout") if flooded[name])
    verdict = judge(replace(evidence, output_flood=bool(truncated)), limits)
    return RunResult(
        status=verdict.status,
        stdout=out,
        stderr=verdict.with_notice(err),
        exit_code=None,
        usage=usage,
        error=verdict.error,
        limit=verdict.limit,
        truncated=truncated,
    )
