"""Round-trip latency of `run_python_code("print('hello')")` over MCP stdio vs. a native subprocess.

Run on demand: `python benchmarks/wasm_latency.py [--calls N]`. Starts `sandgate serve` on stdio
(the installed command), warms it, times N sequential calls; does the same with
`--no-prepared-guests` (every call starts its own guest: the engine before prepared guests);
then times N runs of `python3 -c "print('hello')"` as a subprocess, all in the same run, and
prints p50/p95 and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time

import mcp_types as types
from _figures import percentile, sandgate_command
from mcp import Client, StdioServerParameters

DEFAULT_PAUSE_MS = 100.0
"""Between calls: a client reads each answer before it sends the next call. An agent takes
seconds; at a 20 ms pace on 2 cores, preparing the next guests competes with the calls."""


async def _mcp_times(calls: int, state_dir: str, *, prepared: bool, pause_s: float) -> list[float]:
    args = ["serve", "--state-dir", state_dir, "--policy", _policy()]
    params = StdioServerParameters(
        command=sandgate_command(),
        args=args if prepared else [*args, "--no-prepared-guests"],
        env=dict(os.environ),
    )
    times: list[float] = []
    async with Client(params, read_timeout_seconds=300) as client:
        for _ in range(5):  # warm-up: the pool is ready and every worker has served once
            await client.call_tool("run_python_code", {"code": "print('hello')"})
        for _ in range(calls):
            began = time.perf_counter()
            result = await client.call_tool("run_python_code", {"code": "print('hello')"})
            times.append(time.perf_counter() - began)
            assert isinstance(result, types.CallToolResult) and not result.is_error
            await asyncio.sleep(pause_s)
    return times


def _policy() -> str:
    from policies import shipped_policy_paths

    for path in shipped_policy_paths():
        if path.name == "eval-harness.yaml":
            return str(path)
    raise SystemExit("eval-harness.yaml is not shipped")


def _native_times(calls: int) -> list[float]:
    times: list[float] = []
    for _ in range(calls):
        began = time.perf_counter()
        subprocess.run(["python3", "-c", "print('hello')"], check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--pause-ms", type=float, default=DEFAULT_PAUSE_MS)
    args = parser.parse_args()
    pause_s = args.pause_ms / 1000
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as state:
        prepared = asyncio.run(_mcp_times(args.calls, state, prepared=True, pause_s=pause_s))
    with tempfile.TemporaryDirectory() as state:
        started = asyncio.run(_mcp_times(args.calls, state, prepared=False, pause_s=pause_s))
    native = _native_times(args.calls)
    load_after = os.getloadavg()[0]
    print(
        f"calls: {args.calls}, {args.pause_ms:g} ms apart; "
        f"load average before/after: {load_before:.1f}/{load_after:.1f}"
    )
    rows = [
        ("sandgate over MCP stdio, prepared guests", prepared),
        ("sandgate over MCP stdio, --no-prepared-guests", started),
        ("native python3 -c subprocess", native),
    ]
    for label, times in rows:
        p50, p95 = percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000
        mean = statistics.mean(times) * 1000
        print(f"{label:<48} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  mean {mean:7.1f} ms")
    p50 = {label: percentile(times, 0.5) for label, times in rows}
    print(
        f"ratio p50 prepared/native: {p50[rows[0][0]] / p50[rows[2][0]]:.2f}x (target <= 0.5x); "
        f"prepared/no-prepared: {p50[rows[0][0]] / p50[rows[1][0]]:.2f}x; "
        f"prepared p50 {p50[rows[0][0]] * 1000:.1f} ms (target <= 15 ms)"
    )


if __name__ == "__main__":
    main()
