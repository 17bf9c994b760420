"""Gate overhead: µs per `decide` + `finish` with a SQLite store, against a trivial allow.

Run: `python benchmarks/gate_overhead.py [--calls N] [--fsync]`. Prints p50/p99 per scenario
and the ratio to the same loop with the gate replaced by a function that allows everything.

Scenarios:
    default   the shipped default policy (one per-grant counter of 120/min); the clock moves
              0.5 s per call, so the window holds at most 120 entries, as in real use.
    eval      the shipped eval-harness policy (a per-grant and a global counter of thousands
              per minute) at full speed on the real clock: the window fills with every call.
    eval+fsync  (with `--fsync`) the same with `audit.fsync: true`: every audit record (a
              decision and an outcome per call) fsynced, what surviving power loss costs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from policies import (
    Allowed,
    AuditLog,
    Gate,
    SqliteCounterStore,
    ToolCall,
    default_policy_path,
    load_policy,
)
from sandboxes import Program, WorkspacePaths

TARGET_P50_US = 200.0


class SteppingClock:
    """A clock that moves `step` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.now = time.time()
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _calls(workspace: WorkspacePaths, n: int) -> list[ToolCall]:
    code = "import math\nprint(math.factorial(20))\n"
    return [
        ToolCall(
            "run_code",
            {"code": code, "timeout_s": 5},
            grant="bench",
            session=f"s{i % 8}",
            program=Program("code", code),
            workspace=workspace,
            requested_timeout_s=5.0,
        )
        for i in range(n)
    ]


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99


def _time_gate(
    policy_file: str, clock: Callable[[], float], n: int, *, fsync: bool = False
) -> tuple[list[float], float]:
    """Wall µs of each decide+finish, and the process's mean CPU µs per call."""
    with tempfile.TemporaryDirectory(prefix="sandgate-bench-") as tmp:
        folder = Path(tmp)
        store = SqliteCounterStore(folder / "state.sqlite3")
        audit = AuditLog(folder / "audit.jsonl", fsync=fsync)
        gate = Gate(
            load_policy(default_policy_path().parent / policy_file), store, audit, clock=clock
        )
        calls = _calls(WorkspacePaths(folder, folder), n)
        samples = []
        cpu_began = time.process_time()
        try:
            for call in calls:
                began = time.perf_counter()
                decision = gate.decide(call)
                if not isinstance(decision, Allowed):
                    raise SystemExit(f"benchmark call was refused: {decision}")
                gate.finish(decision, outcome="completed", status="ok", usage={"wall_ms": 1.0})
                samples.append((time.perf_counter() - began) * 1e6)
            cpu = (time.process_time() - cpu_began) * 1e6 / len(calls)
        finally:
            store.close()
            audit.close()
    return samples, cpu


def _time_bypass(n: int) -> list[float]:
    """The same loop with a trivial allow function in place of the gate."""
    folder = Path(tempfile.gettempdir())
    calls = _calls(WorkspacePaths(folder, folder), n)

    def allow(call: ToolCall) -> Allowed:
        return Allowed("x", "/bypass", "", None, None, "off", call)

    def finish(allowed: Allowed) -> None:
        return None

    samples = []
    for call in calls:
        began = time.perf_counter()
        finish(allow(call))
        samples.append((time.perf_counter() - began) * 1e6)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per scenario")
    parser.add_argument("--fsync", action="store_true", help="also eval with audit.fsync: true")
    args = parser.parse_args()
    base50, base99 = _percentiles(_time_bypass(args.calls))
    print(f"bypass (trivial allow)  p50 {base50:8.1f} µs   p99 {base99:8.1f} µs")
    worst = 0.0
    scenarios: list[tuple[str, str, Callable[[], float], bool]] = [
        ("default", "default.yaml", SteppingClock(0.5), False),
        ("eval", "eval-harness.yaml", time.time, False),
    ]
    if args.fsync:
        scenarios.append(("eval+fsync", "eval-harness.yaml", time.time, True))
    for name, policy_file, clock, fsync in scenarios:
        samples, cpu = _time_gate(policy_file, clock, args.calls, fsync=fsync)
        p50, p99 = _percentiles(samples)
        if not fsync:  # the target is for the shipped settings
            worst = max(worst, p50)
        print(
            f"gate {name:<18} p50 {p50:8.1f} µs   p99 {p99:8.1f} µs   "
            f"ratio p50 {p50 / base50:,.0f}x (+{p50 - base50:.1f} µs per call)   "
            f"CPU {cpu:.1f} µs per call (mean; less sensitive to other load)"
        )
    verdict = "meets" if worst < TARGET_P50_US else "misses"
    print(f"target p50 < {TARGET_P50_US:.0f} µs: {verdict}")
    return 0 if worst < TARGET_P50_US else 1


if __name__ == "__main__":
    raise SystemExit(main())
