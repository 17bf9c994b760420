"""Throughput and latency of `sandgate serve --transport streamable-http` under concurrent clients.

Run on demand (not a test): `python benchmarks/load_http.py [--clients 8] [--calls 400]`.

Starts `sandgate serve --transport streamable-http` on a free loopback port with the shipped
`eval-harness.yaml` policy, warms it, then N MCP clients (the SDK `Client` over
`streamable_http_client`) share a fixed number of `run_python_code("print('hello')")` calls,
timed once the server's engine has finished starting (`_proc.settled`).
The same against a server started with `--no-prepared-guests` (the wasm engine as it was
before guests were prepared ahead). In the same run, the upstream-style baseline does the same
workload with the same concurrency: an in-process asyncio harness that runs `python3 -c CODE`
in a subprocess per call (no sandbox, no policy, no MCP). Prints calls/s, p50/p95/p99 latency,
errors, sandgate/baseline ratios, and each server's CPU per call split into its own process,
its engine workers and this (client) process.
Loopback only; every loop is bounded by the call count and every wait by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import mcp_types as types
from _http_server import HOST, REPO, free_port, start_server, stop_server
from _proc import CpuSplit, settled
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

CODE = "print('hello')"
CALL_TIMEOUT_S = 120.0
WARM_CALLS_PER_CLIENT = 10
"""Warm-up calls per client before timing: 80 with 8 clients, past the 20th call of a shape in
each of 3 workers, when a worker loads (or builds) its image's derived module (`_imaged`)."""
GOAL_CALLS_PER_S = 150.0
"""Issue #17's goal with 8 clients on 2 cores, and its ratio to a `python3 -c` per call."""
GOAL_TIMES_BASELINE = 4.0


@dataclass(frozen=True, slots=True)
class Figures:
    """One workload's measurements."""

    name: str
    calls: int
    errors: int
    wall_s: float
    latencies_s: tuple[float, ...]

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def row(self) -> str:
        return (
            f"{self.name:<22} {self.calls:>6} {self.errors:>6} {self.rate:>9.1f} "
            f"{self.percentile_ms(0.5):>9.1f} {self.percentile_ms(0.95):>9.1f} "
            f"{self.percentile_ms(0.99):>9.1f} {1000 * statistics.fmean(self.latencies_s):>9.1f}"
        )


def _policy(tree: Path) -> Path:
    return tree / "policies" / "eval-harness.yaml"


Call = Callable[[], Awaitable[bool]]
"""One call of the workload; `True` when it succeeded."""


async def drive(name: str, calls: int, callers: list[Call]) -> Figures:
    """Share `calls` calls among the callers (one concurrent loop each) and time them."""
    remaining = calls
    latencies: list[float] = []
    errors = 0

    async def loop(call: Call) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            try:
                ok = await asyncio.wait_for(call(), CALL_TIMEOUT_S)
            except (TimeoutError, OSError, RuntimeError) as exc:
                print(f"{name}: call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                ok = False
            latencies.append(time.perf_counter() - began)
            errors += not ok

    began = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in callers))
    return Figures(name, calls, errors, time.perf_counter() - began, tuple(latencies))


@contextlib.asynccontextmanager
async def hello_callers(
    url: str, clients: int, *, legacy: bool = False
) -> AsyncIterator[list[Call]]:
    """`clients` connected MCP clients of `url`, each as a `Call` of
    `run_python_code(CODE)` (a `legacy` client: each its own session with shared sessions)."""
    async with contextlib.AsyncExitStack() as stack:
        sessions: list[Client] = []
        for _ in range(clients):
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=CALL_TIMEOUT_S))
            client = await stack.enter_async_context(
                Client(
                    streamable_http_client(url, http_client=http),
                    mode="legacy" if legacy else "auto",
                )
            )
            sessions.append(client)

        def caller(client: Client) -> Call:
            async def call() -> bool:
                result = await client.call_tool("run_python_code", {"code": CODE})
                return (
                    isinstance(result, types.CallToolResult)
                    and not result.is_error
                    and "hello"
                    in "".join(b.text for b in result.content if isinstance(b, types.TextContent))
                )

            return call

        yield [caller(c) for c in sessions]


async def _sandgate(url: str, clients: int, calls: int, name: str, cpu: CpuSplit) -> Figures:
    async with hello_callers(url, clients) as callers:
        await drive("warm-up", clients * WARM_CALLS_PER_CLIENT, callers)
        waited = await settled(cpu.pid)  # the engine's start-up is no call's CPU
        print(f"{name.strip()}: the engine settled in {waited:.1f} s after the warm-up")
        cpu.start()
        figures = await drive(name, calls, callers)
        cpu.stop()
        return figures


def _python3() -> str:
    """The real interpreter binary (not a pyenv shim script, which costs ~10x its start-up)."""
    return os.path.realpath(sys.executable)


async def _baseline(python: str, clients: int, calls: int) -> Figures:
    async def call() -> bool:
        process = await asyncio.create_subprocess_exec(
            python, "-c", CODE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), CALL_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            return False
        return process.returncode == 0 and out.strip() == b"hello"

    await drive("warm-up", clients, [call] * clients)
    return await drive("baseline (python3 -c)", calls, [call] * clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent MCP clients")
    parser.add_argument("--calls", type=int, default=400, help="calls in all (shared)")
    parser.add_argument(
        "--workers", type=int, default=None, help="server WASM workers (default: its own)"
    )
    parser.add_argument(
        "--tree",
        type=lambda p: Path(p).resolve(),
        default=REPO,
        help="source tree the server runs (its own .venv's python when it has one)",
    )
    parser.add_argument(
        "--python", default=_python3(), help="interpreter the baseline runs (default: this one's)"
    )
    args = parser.parse_args()
    if args.clients < 1 or args.calls < 1:
        raise SystemExit("--clients and --calls: expected whole numbers above 0")
    load_before = os.getloadavg()[0]
    runs: list[Figures] = []
    splits: list[CpuSplit] = []
    for prepared, name in ((True, "sandgate (http, wasm)"), (False, "  --no-prepared-guests")):
        port = free_port()
        extra: tuple[str, ...] = ("--workers", str(args.workers)) if args.workers else ()
        extra += () if prepared else ("--no-prepared-guests",)
        with tempfile.TemporaryDirectory(prefix="sg-load-") as state:
            server = start_server(
                port, policy=_policy(args.tree), state_dir=state, extra=extra, tree=args.tree
            )
            try:
                url = f"http://{HOST}:{port}/mcp"
                splits.append(CpuSplit(server.pid))
                runs.append(asyncio.run(_sandgate(url, args.clients, args.calls, name, splits[-1])))
            finally:
                stop_server(server)
    sandgate = runs[0]
    baseline = asyncio.run(_baseline(args.python, args.clients, args.calls))
    print(
        f"{args.clients} clients, {args.calls} calls of run_python_code({CODE!r}); "
        f"{os.cpu_count()} cores; server WASM workers: {args.workers or 'its default'}; "
        f"baseline: {args.python} -c; server tree: {args.tree}; "
        f"load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'workload':<22} {'calls':>6} {'errors':>6} {'calls/s':>9} {'p50 ms':>9} "
        f"{'p95 ms':>9} {'p99 ms':>9} {'mean ms':>9}"
    )
    for run in runs:
        print(run.row())
    print(baseline.row())
    for run, split in zip(runs, splits, strict=True):
        print(f"{run.name:<22} {split.per_call_ms(run.calls)}")
    print(
        f"sandgate/baseline: throughput x{sandgate.rate / baseline.rate:.2f}, "
        f"p50 x{sandgate.percentile_ms(0.5) / baseline.percentile_ms(0.5):.2f}, "
        f"p95 x{sandgate.percentile_ms(0.95) / baseline.percentile_ms(0.95):.2f}, "
        f"p99 x{sandgate.percentile_ms(0.99) / baseline.percentile_ms(0.99):.2f}"
    )
    print(
        f"goal (issue #17): >= {GOAL_CALLS_PER_S:g} calls/s and >= {GOAL_TIMES_BASELINE:g}x the "
        f"baseline; got {sandgate.rate:.1f} calls/s, x{sandgate.rate / baseline.rate:.2f}"
    )


if __name__ == "__main__":
    main()
