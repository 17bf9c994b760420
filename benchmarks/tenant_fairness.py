"""Fair shares between grants: a quiet grant's latency while another grant floods the server.

Run on demand (not a test):
`python benchmarks/tenant_fairness.py [--engine wasm|pyodide|container|gvisor] [--calls 40]`.

Starts `sandgate serve --transport streamable-http` on a free loopback port with two grants
(alice floods, bob is quiet) and every tool routed to `--engine`. First bob alone makes
`--calls` sequential `run_python_code("print(6*7)")` calls (`pyodide_execute` on pyodide): his
p50 on an idle server (the baseline, measured in the same run). Then alice makes `--sessions`
named sessions (`run_code(session=…)`), each running once, and keeps `--flood` calls in flight
over them from as many MCP clients while bob makes the same calls again.
Prints both p50/p95, the ratio (goal: bob's p50 under the flood within 2x of idle), bob's
errors and "busy" answers, and alice's. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import subprocess
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx2 as httpx
import mcp_types as types
from _http_server import HOST, free_port, start_server, stop_server
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

CODE = "print(6*7)"
CALL_TIMEOUT_S = 120.0
FLOOD_MAX_S = 600.0
TOKENS = {"alice": "bench-token-alice", "bob": "bench-token-bob"}


def _policy(engine: str) -> str:
    grants = "".join(
        f"  {g}: {{token_sha256: '{hashlib.sha256(t.encode()).hexdigest()}'}}\n"
        for g, t in TOKENS.items()
    )
    return (
        "version: '1'\ndefault: deny\n"
        f"grants:\n{grants}"
        f"all_tools:\n  engine: {engine}\n"
        "tools:\n  run_python_code: {}\n  pyodide_execute: {}\n  run_code: {}\n"
        "server:\n  max_sessions_per_grant: 256\n"
    )


def _start(engine: str, folder: Path, workers: int | None) -> tuple[subprocess.Popen[bytes], str]:
    policy = folder / "policy.yaml"
    policy.write_text(_policy(engine))
    port = free_port()
    extra = ("--workers", str(workers)) if workers else ()
    process = start_server(port, policy=policy, state_dir=folder / "state", extra=extra)
    return process, f"http://{HOST}:{port}/mcp"


async def _client(stack: AsyncExitStack, url: str, grant: str) -> Client:
    http = await stack.enter_async_context(
        httpx.AsyncClient(
            headers={"Authorization": f"Bearer {TOKENS[grant]}"}, timeout=CALL_TIMEOUT_S
        )
    )
    return await stack.enter_async_context(Client(streamable_http_client(url, http_client=http)))


def _text(result: types.CallToolResult) -> str:
    return "".join(b.text for b in result.content if isinstance(b, types.TextContent))


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.busy = 0

    async def call(self, client: Client, tool: str, session: str | None = None) -> None:
        began = time.perf_counter()
        arguments = {"code": CODE} if session is None else {"code": CODE, "session": session}
        try:
            result = await client.call_tool(tool, arguments)
        except Exception:
            self.errors += 1
            return
        text = _text(result)
        if "busy" in text:
            self.busy += 1
        elif result.is_error or "42" not in text:
            self.errors += 1
        else:
            self.latencies.append(time.perf_counter() - began)

    def pct_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _bob(url: str, tool: str, calls: int) -> Tally:
    tally = Tally()
    async with AsyncExitStack() as stack:
        bob = await _client(stack, url, "bob")
        await tally.call(bob, tool)  # warm
        tally.latencies.clear()
        for _ in range(calls):
            await tally.call(bob, tool)
    return tally


async def _measure(url: str, tool: str, calls: int, sessions: int, flood: int) -> None:
    idle = await _bob(url, tool, calls)
    alice = Tally()
    async with AsyncExitStack() as stack:
        clients = [await _client(stack, url, "alice") for _ in range(flood)]
        names = [f"flood-{i}" for i in range(sessions)]
        for i, name in enumerate(names):  # each of alice's sessions runs once
            await alice.call(clients[i % flood], "run_code", name)
        stop = asyncio.Event()

        async def flooder(index: int) -> None:
            deadline = time.monotonic() + FLOOD_MAX_S
            turn = index
            while not stop.is_set() and time.monotonic() < deadline:
                await alice.call(clients[index], "run_code", names[turn % sessions])
                turn += flood

        tasks = [asyncio.create_task(flooder(i)) for i in range(flood)]
        try:
            flooded = await _bob(url, tool, calls)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    ratio = flooded.pct_ms(0.5) / idle.pct_ms(0.5)
    print(f"{'':<26}{'p50 ms':>9}{'p95 ms':>9}{'errors':>8}{'busy':>6}")
    for name, t in (("bob, idle server", idle), ("bob, alice flooding", flooded)):
        print(f"{name:<26}{t.pct_ms(0.5):>9.1f}{t.pct_ms(0.95):>9.1f}{t.errors:>8}{t.busy:>6}")
    print(
        f"{'alice (flood)':<26}{alice.pct_ms(0.5):>9.1f}{alice.pct_ms(0.95):>9.1f}"
        f"{alice.errors:>8}{alice.busy:>6}   ({len(alice.latencies)} calls)"
    )
    print(f"ratio bob flooded/idle p50: x{ratio:.2f} (goal <= 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engine", default="wasm", choices=("wasm", "pyodide", "container", "gvisor")
    )
    parser.add_argument("--calls", type=int, default=40, help="bob's calls per phase")
    parser.add_argument("--sessions", type=int, default=40, help="alice's MCP sessions")
    parser.add_argument("--flood", type=int, default=8, help="alice's calls in flight")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    tool = "pyodide_execute" if args.engine == "pyodide" else "run_python_code"
    with tempfile.TemporaryDirectory(prefix="sandgate-fairness-") as folder:
        process, url = _start(args.engine, Path(folder), args.workers)
        try:
            print(
                f"engine {args.engine}, tool {tool}, alice: {args.sessions} sessions, "
                f"{args.flood} calls in flight; bob: {args.calls} sequential calls"
            )
            asyncio.run(_measure(url, tool, args.calls, args.sessions, args.flood))
        finally:
            with contextlib.suppress(Exception):
                stop_server(process)


if __name__ == "__main__":
    main()
