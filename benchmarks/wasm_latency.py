"""Round-trip latency of `run_python_code("print('hello')")` over MCP stdio vs. a native subprocess.

Run on demand: `python benchmarks/wasm_latency.py [--calls N]`. Starts `sandgate serve` on stdio
(the installed command), warms it, times N sequential calls, then times N runs of
`python3 -c "print('hello')"` as a subprocess in the same run, and prints p50/p95 and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mcp_types as types
from mcp import Client, StdioServerParameters


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _sandgate() -> str:
    beside = Path(sys.executable).with_name("sandgate")
    return str(beside) if beside.exists() else (shutil.which("sandgate") or "sandgate")


async def _mcp_times(calls: int, state_dir: str) -> list[float]:
    params = StdioServerParameters(
        command=_sandgate(),
        args=["serve", "--state-dir", state_dir, "--policy", _policy()],
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        sandboxed = asyncio.run(_mcp_times(args.calls, state))
    native = _native_times(args.calls)
    s50, s95 = _percentile(sandboxed, 0.5) * 1000, _percentile(sandboxed, 0.95) * 1000
    n50, n95 = _percentile(native, 0.5) * 1000, _percentile(native, 0.95) * 1000
    print(f"calls: {args.calls}")
    print(
        f"sandgate run_python_code over MCP stdio: p50 {s50:.1f} ms  p95 {s95:.1f} ms  "
        f"mean {statistics.mean(sandboxed) * 1000:.1f} ms"
    )
    print(f"native python3 -c subprocess:            p50 {n50:.1f} ms  p95 {n95:.1f} ms")
    print(f"ratio p50 sandgate/native: {s50 / n50:.2f}x  (target <= 0.5x)")


if __name__ == "__main__":
    main()
