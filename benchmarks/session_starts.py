"""New persistent sessions one after another: the first call of each, over MCP stdio.

Run on demand: `python benchmarks/session_starts.py [--sessions N] [--gap-ms G]
[--baseline-tree DIR]`. Starts `sandgate serve` on stdio (wasm engine, `state: persistent`) and
calls `run_code` in N new named sessions one after another, pausing G ms after each (the
session's other calls, as an eval harness running one task per session does). Each new session's
first call starts its live guest; the figure is that call's round trip. The baseline, in the
same run: sessions 2 s apart, each finding the engine's standby process warm. With
`--baseline-tree`, another checkout's server is measured the same way, the two alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import mcp_types as types
from _figures import percentile, stdio_server
from mcp import Client, StdioServerParameters

BASELINE_GAP_MS = 2000.0
"""Sessions this far apart find the standby process warm: a guest's opening only."""
POLICY = (
    'version: "1"\ndefault: deny\n'
    "quotas: {timeout_s: 30, memory_mb: 256}\n"
    "all_tools: {engine: wasm, state: persistent}\n"
    "tools:\n  run_code: {}\n"
)


def _server(folder: Path, tree: str | None) -> StdioServerParameters:
    policy = folder / "policy.yaml"
    policy.write_text(POLICY)
    args = ["serve", "--state-dir", str(folder / "state"), "--policy", str(policy)]
    return stdio_server(args, tree)


async def _first_calls(tree: str | None, sessions: int, gap_s: float) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="sg-starts-") as folder:
        times: list[float] = []
        async with Client(_server(Path(folder), tree), read_timeout_seconds=600) as client:
            await client.call_tool("run_code", {"code": "print('warm')", "session": "warm"})
            await asyncio.sleep(3.0)  # the engine's warm-up, before the first timed session
            for n in range(sessions):
                began = time.perf_counter()
                result = await client.call_tool("run_code", {"code": "6 * 7", "session": f"s{n}"})
                times.append(time.perf_counter() - began)
                assert isinstance(result, types.CallToolResult) and not result.is_error, result
                await asyncio.sleep(gap_s)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=300.0)
    parser.add_argument("--baseline-tree", default=None)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    trees: list[tuple[str, str | None]] = [("this tree", None)]
    if args.baseline_tree:
        trees.append(("baseline tree", args.baseline_tree))
    print(
        f"{args.sessions} new sessions one after another, {args.gap_ms:.0f} ms after each; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for round_ in range(1, args.rounds + 1):
        for label, tree in trees:
            for gap_ms in (args.gap_ms, BASELINE_GAP_MS):
                times = asyncio.run(_first_calls(tree, args.sessions, gap_ms / 1000))
                p50, p95 = percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000
                mean = statistics.mean(times) * 1000
                print(
                    f"round {round_} {label:<14} {gap_ms:6.0f} ms apart  first call "
                    f"p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  mean {mean:7.1f} ms"
                )


if __name__ == "__main__":
    main()
