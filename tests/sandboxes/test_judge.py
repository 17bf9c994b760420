"""The one judge of how a run ended: its precedence, its limit texts and its error lines
(pure logic; `test_same_status.py` checks that every real engine reaches it the same way)."""

from __future__ import annotations

import pytest

from sandboxes import (
    DiskUsage,
    Evidence,
    LimitName,
    Limits,
    Verdict,
    judge,
    limit_named,
    limit_text,
    stopped_for_workspace,
    workspace_limit,
)
from sandboxes._judge import OUT_OF_MEMORY_ERROR

LIMITS = Limits(
    wall_timeout_s=2.5,
    cpu_time_s=1.0,
    memory_bytes=64 << 20,
    output_bytes=1000,
    processes=16,
    workspace_bytes=100_000,
    workspace_files=50,
    fuel=123_456,
)

WORKSPACE = Evidence(workspace_over=True)
PROCESSES = Evidence(processes_refused=True, exit_code=1, error="BlockingIOError: x")
MEMORY = Evidence(memory="oom_kill")
FLOOD = Evidence(output_flood=True)
DEADLINE = Evidence(deadline_passed=True)
CPU = Evidence(cpu_exceeded=True)
FUEL = Evidence(fuel_exhausted=True)
DIED = Evidence(died="signal 11")
RAISED = Evidence(exit_code=1, error="ValueError: boom")


def merged(*parts: Evidence) -> Evidence:
    """The evidence of several events seen in one run (any field set in any part)."""
    fields: dict[str, object] = {}
    for part in parts:
        for name in Evidence.__slots__:
            value = getattr(part, name)
            if value not in (None, False):
                fields[name] = value
    return Evidence(**fields)  # type: ignore[arg-type]


PRECEDENCE: list[tuple[Evidence, str, LimitName | None]] = [
    (WORKSPACE, "killed", "workspace"),
    (PROCESSES, "killed", "processes"),
    (FLOOD, "output_limit", "output"),
    (MEMORY, "memory", "memory"),
    (DEADLINE, "timeout", "wall_time"),
    (CPU, "timeout", "cpu_time"),
    (FUEL, "timeout", "fuel"),
    (DIED, "killed", None),
    (RAISED, "error", None),
]
"""Every kind of event, highest precedence first, with the verdict it gets on its own."""


@pytest.mark.parametrize(("evidence", "status", "name"), PRECEDENCE)
def test_each_event_alone_has_its_status_and_limit(
    evidence: Evidence, status: str, name: LimitName | None
) -> None:
    verdict = judge(evidence, LIMITS)
    assert (verdict.status, verdict.limit_name) == (status, name)
    assert verdict.limit == (None if name is None else limit_text(name, LIMITS))


@pytest.mark.parametrize("higher", range(len(PRECEDENCE)))
def test_an_event_wins_over_every_event_after_it(higher: int) -> None:
    evidence, status, name = PRECEDENCE[higher]
    for lower, _, _ in PRECEDENCE[higher + 1 :]:
        verdict = judge(merged(lower, evidence), LIMITS)
        assert (verdict.status, verdict.limit_name) == (status, name), (evidence, lower)


def test_a_flood_that_also_runs_out_of_memory_is_the_flood() -> None:
    verdict = judge(Evidence(memory="memory_error", output_flood=True, exit_code=1), LIMITS)
    assert (verdict.status, verdict.limit) == ("output_limit", "output 1000 bytes per stream")


def test_an_endless_printing_loop_is_the_flood_not_the_deadline() -> None:
    verdict = judge(Evidence(output_flood=True, deadline_passed=True), LIMITS)
    assert verdict.status == "output_limit"


def test_a_refused_fork_the_code_survived_stopped_nothing() -> None:
    verdict = judge(Evidence(processes_refused=True, exit_code=0), LIMITS)
    assert (verdict.status, verdict.limit, verdict.error) == ("ok", None, None)


def test_a_refused_fork_that_killed_the_sandbox_names_processes() -> None:
    died = Evidence(processes_refused=True, died="container exit status 2", detail="gVisor died")
    verdict = judge(died, LIMITS)
    assert (verdict.status, verdict.limit) == ("killed", "processes 16")
    assert verdict.notice() == "sandgate: stopped: processes 16; gVisor died\n"


def test_the_workspace_overrides_an_otherwise_good_run() -> None:
    verdict = judge(Evidence(workspace_over=True, exit_code=0), LIMITS)
    assert (verdict.status, verdict.limit) == ("killed", workspace_limit(LIMITS))
    assert verdict.error is None


def test_what_the_workspace_held_is_detail_not_limit() -> None:
    held = DiskUsage(bytes=200_704, files=7)
    verdict = judge(Evidence(workspace_over=True, workspace_held=held, detail="x"), LIMITS)
    assert verdict.limit == "workspace 100000 bytes of disk and 50 files"
    assert verdict.detail == "it held 200704 bytes in 7 files; x"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("workspace", "workspace 100000 bytes of disk and 50 files"),
        ("processes", "processes 16"),
        ("memory", f"memory {64 << 20} bytes"),
        ("output", "output 1000 bytes per stream"),
        ("wall_time", "wall time 2.5 s"),
        ("cpu_time", "CPU time 1 s"),
        ("fuel", "fuel 123456 instructions"),
    ],
)
def test_each_limit_has_one_text_that_names_it(name: LimitName, text: str) -> None:
    assert limit_text(name, LIMITS) == text
    assert limit_named(text) == name
    assert limit_named(f"{text}; the session's workspace was emptied") == name


def test_the_cpu_backstop_without_a_cpu_limit() -> None:
    assert limit_text("cpu_time", Limits(cpu_time_s=None)) == "CPU time backstop"
    assert limit_named("CPU time backstop") == "cpu_time"


def test_texts_that_name_no_limit() -> None:
    assert limit_named(None) is None
    assert limit_named("the sandbox process ended (signal 9)") is None
    assert not stopped_for_workspace("memory 10 bytes; workspace 1 bytes")
    assert stopped_for_workspace(f"{workspace_limit(LIMITS)}; the session's workspace was emptied")


def test_error_lines() -> None:
    assert judge(Evidence(memory="memory_trap"), LIMITS).error == OUT_OF_MEMORY_ERROR
    # The guest's own MemoryError reads like the kernel's kill: one memory stop, one line.
    raised = judge(Evidence(memory="memory_error", error="MemoryError", exit_code=1), LIMITS)
    assert (raised.error, raised.exit_code) == (OUT_OF_MEMORY_ERROR, None)
    assert judge(DIED, LIMITS).error == "the sandbox ended without a report (signal 11)"
    assert judge(RAISED, LIMITS).error == "ValueError: boom"
    assert judge(Evidence(exit_code=3), LIMITS) == Verdict(status="error", exit_code=3)
    assert judge(Evidence(exit_code=0), LIMITS) == Verdict(status="ok", exit_code=0)


def test_the_stderr_notice() -> None:
    stopped = judge(Evidence(deadline_passed=True, detail="restarted"), LIMITS)
    assert (
        stopped.with_notice("partial") == "partial\nsandgate: stopped: wall time 2.5 s; restarted\n"
    )
    assert judge(Evidence(exit_code=1, detail="it failed"), LIMITS).notice() == (
        "sandgate: it failed\n"
    )
    assert judge(Evidence(exit_code=0), LIMITS).with_notice("out\n") == "out\n"
