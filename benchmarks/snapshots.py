"""Sessions made from a snapshot vs sessions made from nothing, over MCP stdio.

Run on demand: `python benchmarks/snapshots.py [--engine wasm|pyodide|container|gvisor]
[--forks N]`. One `sandgate serve` on stdio, every tool on the engine, `state: persistent`.
A session imports a few modules and builds some state (SETUP); then, in the same run:

- **fork**: `snapshot_session`, one `fork_session(count=N)`, then the first call in each fork
  (it resumes the saved interpreter: the state is there, nothing is imported again);
- **fresh** (the baseline): N new sessions, each running SETUP on its first call, as it would
  need to without snapshots;
- **resume**: `restore_session` of the snapshot into an existing session, then its next call,
  vs that session's first call when new (the same figure as fresh, per session).

Prints per-session p50/p95 and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mcp_types as types
from _figures import percentile, sandgate_command
from mcp import Client, StdioServerParameters

SETUP = (
    "import json, decimal, email.message, statistics, fractions, csv, xml.dom.minidom\n"
    "table = [{'n': i, 'sq': i * i} for i in range(20000)]\n"
    "total = sum(r['sq'] for r in table)\n"
)
SETUP_PANDAS = (
    "import numpy as np, pandas as pd\n"
    "table = pd.DataFrame({'n': np.arange(20000)})\n"
    "total = int((table['n'] ** 2).sum())\n"
)
"""`--pandas` (wasm: its guest has numpy and pandas): state that costs seconds to rebuild."""
USE = "print(len(table), total)"


def _policy(folder: Path, engine: str, forks: int) -> Path:
    path = folder / "policy.yaml"
    tools = ["run_code", "snapshot_session", "restore_session", "fork_session"]
    path.write_text(
        'version: "1"\ndefault: deny\n'
        "quotas: {timeout_s: 60, memory_mb: 256}\n"
        f"all_tools: {{engine: {engine}, state: persistent}}\n"
        "tools:\n" + "".join(f"  {t}: {{}}\n" for t in tools) + "server:\n"
        f"  max_forks_per_call: {forks}\n"
        f"  max_sessions_per_grant: {3 * forks + 8}\n"
    )
    return path


async def _call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert isinstance(result, types.CallToolResult) and not result.is_error, result
    assert result.structured_content is not None, result
    return dict(result.structured_content)


async def _timed(client: Client, tool: str, **args: Any) -> tuple[float, dict[str, Any]]:
    began = time.perf_counter()
    answer = await _call(client, tool, **args)
    return time.perf_counter() - began, answer


async def _measure(engine: str, forks: int, setup: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sg-snap-") as folder:
        args = ["serve", "--state-dir", str(Path(folder) / "state")]
        args += ["--policy", str(_policy(Path(folder), engine, forks))]
        params = StdioServerParameters(command=sandgate_command(), args=args, env=dict(os.environ))
        async with Client(params, read_timeout_seconds=1800) as client:
            await _call(client, "run_code", code="print('warm')", session="warm")
            await _call(client, "run_code", code=setup, session="base")
            snap_s, taken = await _timed(client, "snapshot_session", session="base")
            snapshot = taken["snapshot"]
            fork_s, forked = await _timed(
                client, "fork_session", snapshot_id=snapshot["id"], count=forks, prefix="f"
            )
            first_in_fork: list[float] = []
            for name in forked["sessions"]:
                took, ran = await _timed(client, "run_code", code=USE, session=name)
                assert ran["state"] == "kept", ran
                first_in_fork.append(took)
            fresh: list[float] = []
            for i in range(forks):
                took, ran = await _timed(client, "run_code", code=setup + USE, session=f"n-{i}")
                assert ran["state"] == "new", ran
                fresh.append(took)
            resumes: list[float] = []
            for i in range(min(forks, 20)):
                took_restore, _ = await _timed(
                    client, "restore_session", snapshot_id=snapshot["id"], session=f"n-{i}"
                )
                took_call, ran = await _timed(client, "run_code", code=USE, session=f"n-{i}")
                assert ran["state"] == "kept", ran
                resumes.append(took_restore + took_call)
        return {
            "snapshot_s": snap_s,
            "snapshot_bytes": snapshot["bytes"],
            "fork_s": fork_s,
            "first_in_fork": first_in_fork,
            "fresh": fresh,
            "resumes": resumes,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--engine", default="wasm", choices=("wasm", "pyodide", "container", "gvisor")
    )
    parser.add_argument("--forks", type=int, default=100)
    parser.add_argument(
        "--pandas", action="store_true", help="build the state with numpy and pandas (wasm)"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    m = asyncio.run(_measure(args.engine, args.forks, SETUP_PANDAS if args.pandas else SETUP))
    load_after = os.getloadavg()[0]
    n = args.forks
    per_fork = [m["fork_s"] / n + t for t in m["first_in_fork"]]
    print(
        f"engine {args.engine}, {n} sessions, state {'numpy+pandas' if args.pandas else 'stdlib'}; "
        "load average before/after: "
        f"{load_before:.1f}/{load_after:.1f}"
    )
    print(
        f"snapshot_session: {m['snapshot_s'] * 1000:.0f} ms, {m['snapshot_bytes']} bytes; "
        f"fork_session(count={n}): {m['fork_s'] * 1000:.0f} ms ({m['fork_s'] / n * 1000:.1f} ms "
        "a session)"
    )
    rows = (
        ("fork: its share of fork_session + first call", per_fork),
        ("fresh (baseline): first call running SETUP", m["fresh"]),
        ("resume: restore_session + next call", m["resumes"]),
    )
    for label, times in rows:
        p50, p95 = percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000
        print(f"{label:<48} p50 {p50:8.1f} ms  p95 {p95:8.1f} ms  total {sum(times):7.2f} s")
    base = percentile(m["fresh"], 0.5)
    print(
        f"ratios p50 vs fresh: fork {percentile(per_fork, 0.5) / base:.2f}x, "
        f"resume {percentile(m['resumes'], 0.5) / base:.2f}x; {n} sessions ready: fork "
        f"{m['fork_s'] + sum(m['first_in_fork']):.2f} s vs fresh {sum(m['fresh']):.2f} s"
    )


if __name__ == "__main__":
    main()
