"""How a run ended, decided once for every engine: what an engine saw (`Evidence`), one
precedence (`judge`), and one text per limit (`limit_text`).

An engine never picks a status itself. It writes down what it observed and asks `judge`; the
same event therefore ends with the same `status`, `limit` and `error` on wasm, pyodide,
container (runc) and gVisor (runsc). `RunResult.limit` is the shared text alone, identical on
every engine; what one engine can add that is true of it only (Pyodide restarts the session's
interpreter, gVisor's sandbox died, the host backstop stopped a wasm worker, what the
workspace held) is `Evidence.detail`, written after the shared text in the one line the engine
appends to stderr (`Verdict.notice`).

Precedence, the first that applies wins:

1. `workspace` (`killed`): the workspace passed its disk or inode budget, or a write was
   refused for it. First because the runner empties such a workspace whatever else happened
   (every file of the session is gone, the most lasting consequence), and because the
   watchdogs that catch it stop the run by killing it, which shows up as later symptoms
   (a "cancelled" trap, a container that died) that must not name the run.
2. `processes` (`killed`): a process or thread was refused (pids cgroup, `RLIMIT_NPROC`, the
   gVisor sentry dying for it), and the run did not end well. Before the flood and memory
   because a fork bomb fills memory (and the output) with its copies: they are its
   consequences, never the reverse. A refused fork the code survived (exit 0) stopped nothing
   and is not reported.
3. `output_limit`: a stream passed `Limits.output_bytes`. The container stops a run at the
   cap, while wasm and Pyodide drop the rest and let the run go on: whatever they see after
   the flood would not have happened on the container, so the flood must win for the same
   code to end the same everywhere. An endless printing loop is stopped by the cap on the
   container and by the deadline on the others; a loop that prints and grows passes the cap
   (a megabyte) long before memory (hundreds), is stopped there by the container, and is seen
   running out of memory too by wasm and Pyodide. The rare reverse order (memory first,
   caught by the code, then a flood) is reported as the flood.
4. `memory` (`memory`): the OOM killer, a `MemoryError`, a memory trap, a V8 heap death.
   Above the time limits: memory running short makes a run slow, never the reverse.
5. `timeout`: wall time, then CPU time, then fuel. Below every other limit because a deadline
   is by nature the last thing that happens: anything else observed happened before it.
6. `killed` without a limit: the sandbox ended without a report (a signal, a crash, a trap)
   and no limit explains it.
7. `error`: the code raised, or exited with a status other than 0.
8. `ok`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._files import DiskUsage
from ._types import Limits, Status

LimitName = Literal["workspace", "processes", "memory", "output", "wall_time", "cpu_time", "fuel"]
"""The limits a run can be stopped by, each with one text (`limit_text`)."""

MemorySign = Literal["oom_kill", "memory_error", "memory_trap", "js_heap"]
"""How an engine saw memory run out: the kernel's OOM killer, a Python `MemoryError`, a
WebAssembly memory trap, or V8's heap limit."""

_PREFIXES: tuple[tuple[str, LimitName], ...] = (
    ("workspace ", "workspace"),
    ("processes ", "processes"),
    ("memory ", "memory"),
    ("output ", "output"),
    ("wall time ", "wall_time"),
    ("CPU time ", "cpu_time"),
    ("fuel ", "fuel"),
)
"""How each limit text begins (a text names exactly one limit)."""

OUT_OF_MEMORY_ERROR = "MemoryError: the sandbox ran out of memory"
"""The error line of a run stopped for memory that reported no exception of its own."""


def limit_text(name: LimitName, limits: Limits) -> str:
    """The one text of limit `name` under `limits`, the same on every engine.

    `workspace 268435456 bytes of disk and 10000 files`, `processes 64`,
    `memory 536870912 bytes`, `output 1048576 bytes per stream`, `wall time 30 s`,
    `CPU time 10 s` (`CPU time backstop` when no CPU limit was set and the engine's own bound
    fired), `fuel 1000000 instructions`.
    """
    if name == "workspace":
        return (
            f"workspace {limits.workspace_bytes} bytes of disk and {limits.workspace_files} files"
        )
    if name == "processes":
        return f"processes {limits.processes}"
    if name == "memory":
        return f"memory {limits.memory_bytes} bytes"
    if name == "output":
        return f"output {limits.output_bytes} bytes per stream"
    if name == "wall_time":
        return f"wall time {limits.wall_timeout_s:g} s"
    if name == "cpu_time":
        cpu = limits.cpu_time_s
        return "CPU time backstop" if cpu is None else f"CPU time {cpu:g} s"
    return f"fuel {limits.fuel} instructions"


def workspace_limit(limits: Limits, held: DiskUsage | None = None) -> str:
    """The workspace limit's text, and what the workspace held when `held` is given."""
    text = limit_text("workspace", limits)
    return text if held is None else f"{text} (it held {held.describe()})"


def limit_named(limit: str | None) -> LimitName | None:
    """The limit a `RunResult.limit` text names (its first `;`-separated part), or None."""
    head = (limit or "").split("; ", 1)[0]
    return next((name for prefix, name in _PREFIXES if head.startswith(prefix)), None)


def stopped_for_workspace(limit: str | None) -> bool:
    """Whether a `RunResult.limit` text says the workspace budget stopped the run."""
    return limit_named(limit) == "workspace"


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an engine observed about one run; facts only, `judge` decides what they mean.

    Attributes:
        workspace_over: The workspace passed its budget (bytes or files), or a write was
            refused because it would have (a file past the per-file cap, files not copied
            back).
        workspace_held: What the workspace occupied when that was measured, if known.
        processes_refused: A process or thread could not be made for the process limit.
        memory: How memory was seen to run out, if it did.
        output_flood: A stream passed `Limits.output_bytes`.
        deadline_passed: The wall-clock deadline passed and the run was stopped for it.
        cpu_exceeded: The CPU-time limit (or the engine's CPU backstop) was signalled.
        fuel_exhausted: The guest ran out of fuel.
        died: How the sandbox ended without a report, in words (`signal 9`, `container exit
            status 2`, `the guest trapped: stack overflow`); None when it reported.
        exit_code: The program's exit status, when it exited.
        error: The exception line the program reported (`ValueError: boom`).
        detail: True words only this engine can add (`the gVisor sandbox died`, Pyodide's
            restart); written after the shared text in the stderr line, never in `limit`.
    """

    workspace_over: bool = False
    workspace_held: DiskUsage | None = None
    processes_refused: bool = False
    memory: MemorySign | None = None
    output_flood: bool = False
    deadline_passed: bool = False
    cpu_exceeded: bool = False
    fuel_exhausted: bool = False
    died: str | None = None
    exit_code: int | None = None
    error: str | None = None
    detail: str | None = None

    @property
    def ended_well(self) -> bool:
        """The program exited by itself with status 0 and reported no exception."""
        return self.died is None and self.exit_code == 0 and self.error is None


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a run ended: its status, the limit that stopped it (the shared text), its error
    line, and the engine's extra words.

    Attributes:
        status: The `RunResult.status`.
        limit: The `RunResult.limit`: `limit_text` of the limit, or None.
        limit_name: Which limit that is.
        error: The `RunResult.error`: the program's exception line, or what the judge knows
            (`OUT_OF_MEMORY_ERROR` for every run stopped for memory, the sandbox ending
            without a report); None on `ok`.
        detail: `Evidence.detail`, for `notice`.
        exit_code: The `RunResult.exit_code`: the program's own exit status on `ok` and
            `error`; None whenever a limit or the sandbox's end decided the run (the runtime
            stopped it, whether or not the program got to exit afterwards on some engine).
    """

    status: Status
    limit: str | None = None
    limit_name: LimitName | None = None
    error: str | None = None
    detail: str | None = None
    exit_code: int | None = None

    @property
    def keeps_value(self) -> bool:
        """Whether the run's value (`variable_to_return`, the final expression) is given:
        only for a run that ended `ok`, as on every engine."""
        return self.status == "ok"

    def notice(self) -> str:
        """The line an engine appends to stderr (empty when there is nothing to say):
        `sandgate: stopped: <limit>; <detail>`, or `sandgate: <detail>` without a limit."""
        if self.limit is not None:
            tail = f"; {self.detail}" if self.detail else ""
            return f"sandgate: stopped: {self.limit}{tail}\n"
        return f"sandgate: {self.detail}\n" if self.detail else ""

    def with_notice(self, stderr: str) -> str:
        """`stderr` with `notice()` on a line of its own after it."""
        line = self.notice()
        if not line:
            return stderr
        if stderr and not stderr.endswith("\n"):
            stderr += "\n"
        return stderr + line


def judge(evidence: Evidence, limits: Limits) -> Verdict:
    """The verdict on one run, by the precedence in this module's docstring."""
    ev = evidence
    name: LimitName | None = None
    status: Status
    if ev.workspace_over:
        status, name = "killed", "workspace"
    elif ev.processes_refused and not ev.ended_well:
        status, name = "killed", "processes"
    elif ev.output_flood:
        status, name = "output_limit", "output"
    elif ev.memory is not None:
        status, name = "memory", "memory"
    elif ev.deadline_passed:
        status, name = "timeout", "wall_time"
    elif ev.cpu_exceeded:
        status, name = "timeout", "cpu_time"
    elif ev.fuel_exhausted:
        status, name = "timeout", "fuel"
    elif ev.died is not None:
        status = "killed"
    elif ev.ended_well:
        status = "ok"
    else:
        status = "error"
    error = ev.error
    if status == "memory":  # the same words whether the guest raised or the kernel killed it
        error = OUT_OF_MEMORY_ERROR
    elif status == "killed" and name is None and error is None:
        error = f"the sandbox ended without a report ({ev.died})"
    elif status == "ok":
        error = None
    detail = ev.detail
    if name == "workspace" and ev.workspace_held is not None:
        held = f"it held {ev.workspace_held.describe()}"
        detail = f"{held}; {detail}" if detail else held
    return Verdict(
        status=status,
        limit=None if name is None else limit_text(name, limits),
        limit_name=name,
        error=error,
        detail=detail,
        exit_code=ev.exit_code if status in ("ok", "error") else None,
    )
