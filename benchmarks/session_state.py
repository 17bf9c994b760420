"""A session that keeps its interpreter vs one that starts fresh every call, over MCP stdio.

Run on demand: `python benchmarks/session_state.py [--engine wasm|pyodide|container|gvisor]
[--calls N]`. Starts `sandgate serve` on stdio twice with the same policy but for `state:`
(`persistent`, then `fresh`: the baseline, measured in the same run), and times N sequential
`run_python_code` calls of one session whose code imports a few stdlib modules and updates a
counter, as an agent's data-analysis session does. With `persistent`, the imports are paid
once and the counter is kept; with `fresh`, every call pays them again and finds nothing.
Prints p50/p95 per mode and the ratio.
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
from _figures import percentile, sandgate_command
from mcp import Client, StdioServerParameters

CODE = (
    "import json, decimal, email.message, statistics, fractions\n"
    "count = globals().get('count', 0) + 1\n"
    "print(count)\n"
)
"""One call of an analysis session: its imports, and a counter the session keeps (or not)."""


def _policy(folder: Path, engine: str, state: str) -> Path:
    path = folder / f"policy-{state}.yaml"
    path.write_text(
        'version: "1"\ndefault: deny\n'
        "quotas: {timeout_s: 30, memory_mb: 256}\n"
        f"all_tools: {{engine: {engine}, state: {state}}}\n"
        "tools:\n  run_python_code: {}\n"
    )
    return path


async def _times(engine: str, state: str, calls: int) -> tuple[list[float], str]:
    with tempfile.TemporaryDirectory(prefix="sg-state-") as folder:
        args = ["serve", "--state-dir", str(Path(folder) / "state")]
        args += ["--policy", str(_policy(Path(folder), engine, state))]
        params = StdioServerParameters(command=sandgate_command(), args=args, env=dict(os.environ))
        times: list[float] = []
        last = ""
        async with Client(params, read_timeout_seconds=600) as client:
            await client.call_tool("run_python_code", {"code": "print('warm')"})
            for _ in range(calls):
                began = time.perf_counter()
                result = await client.call_tool("run_python_code", {"code": CODE})
                times.append(time.perf_counter() - began)
                assert isinstance(result, types.CallToolResult) and not result.is_error, result
                block = result.content[0]
                last = block.text.strip() if isinstance(block, types.TextContent) else ""
        return times, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--engine", default="wasm", choices=("wasm", "pyodide", "container", "gvisor")
    )
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    kept, kept_last = asyncio.run(_times(args.engine, "persistent", args.calls))
    fresh, fresh_last = asyncio.run(_times(args.engine, "fresh", args.calls))
    load_after = os.getloadavg()[0]
    print(
        f"engine {args.engine}, {args.calls} calls of one session; "
        f"load average before/after: {load_before:.1f}/{load_after:.1f}"
    )
    for label, times, last in (
        ("state: persistent", kept, kept_last),
        ("state: fresh (baseline)", fresh, fresh_last),
    ):
        p50, p95 = percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000
        mean = statistics.mean(times) * 1000
        print(f"{label:<26} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  mean {mean:7.1f} ms  last {last}")
    ratio = percentile(kept, 0.5) / percentile(fresh, 0.5)
    print(f"ratio p50 persistent/fresh: {ratio:.2f}x (the counter: {kept_last} vs {fresh_last})")


if __name__ == "__main__":
    main()
