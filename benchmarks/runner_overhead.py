"""The server's own CPU per call (everything outside the wasm guest), side by side for source
trees: back-to-back `run_python_code` over MCP stdio and over streamable HTTP with N clients.

Run on demand (not a test):
`python benchmarks/runner_overhead.py [--tree PATH ...] [--calls N] [--clients 8]
[--policy default|eval-harness ...] [--py-spy DIR]`.

Each tree (default: this one) is served by this interpreter with `PYTHONPATH=TREE`, so a
worktree of an older commit (`git worktree add --detach DIR REV`) runs its own code with the
same dependencies. For each tree and policy: N back-to-back calls of
`run_python_code(code="out = 'hello'", variable_to_return="out")` over one stdio session (p50,
p95), then N calls shared by `--clients` streamable-HTTP clients (calls/s, p50). The server
process's own CPU (user + system from `/proc/PID/stat`, its threads included, its wasm worker
processes not) is read around each timed part and divided by the calls. With `--py-spy DIR`,
py-spy (if on PATH) samples the server during the timed part and leaves collapsed stacks there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import mcp_types as types
from _figures import percentile
from _http_server import HOST, START_TIMEOUT_S, free_port, stop_server
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[1]
CALL = {"code": "out = 'hello'", "variable_to_return": "out"}
WARM_CALLS = 10
CALL_TIMEOUT_S = 120.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Figures:
    """One timed part: round trips (seconds), wall time and the server's CPU seconds."""

    times: tuple[float, ...]
    wall_s: float
    cpu_s: float

    def line(self) -> str:
        calls = len(self.times)
        return (
            f"p50 {percentile(list(self.times), 0.5) * 1000:6.2f} ms  "
            f"p95 {percentile(list(self.times), 0.95) * 1000:6.2f} ms  "
            f"{calls / self.wall_s:6.1f} calls/s  "
            f"server CPU {self.cpu_s / calls * 1000:5.2f} ms/call"
        )


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


def _server_pid(state_dir: str) -> int:
    """The server process whose command line names `state_dir` (made by this run)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if state_dir.encode() in argv and b"serve" in argv:
                return int(entry.name)
    raise SystemExit(f"no server process found for {state_dir}")


@contextlib.contextmanager
def _sampled(pid: int, out: Path | None, label: str) -> Iterator[None]:
    spy = shutil.which("py-spy")
    if out is None or spy is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{label}.txt"
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--gil",
        "-r",
        "1000",
        "-o",
        str(target),
    ]
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        sampler.send_signal(2)
        sampler.wait(timeout=30)


def _ok(result: object) -> bool:
    return (
        isinstance(result, types.CallToolResult)
        and not result.is_error
        and "hello" in "".join(b.text for b in result.content if isinstance(b, types.TextContent))
    )


async def _stdio(tree: Path, policy: Path, calls: int, spy: Path | None, label: str) -> Figures:
    with tempfile.TemporaryDirectory(prefix="sg-overhead-") as state:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "runner", "serve", "--state-dir", state, "--policy", str(policy)],
            env=env,
            cwd=str(tree),
        )
        async with Client(params, read_timeout_seconds=CALL_TIMEOUT_S) as client:
            for _ in range(WARM_CALLS):
                assert _ok(await client.call_tool("run_python_code", CALL))
            pid = _server_pid(state)
            times = []
            with _sampled(pid, spy, label):
                cpu, began = _cpu_s(pid), time.perf_counter()
                for _ in range(calls):
                    t0 = time.perf_counter()
                    result = await client.call_tool("run_python_code", CALL)
                    times.append(time.perf_counter() - t0)
                    assert _ok(result), result
                wall, cpu = time.perf_counter() - began, _cpu_s(pid) - cpu
            return Figures(tuple(times), wall, cpu)


async def _http_calls(
    url: str, clients: int, calls: int, pid: int, spy: Path | None, label: str
) -> Figures:
    async with contextlib.AsyncExitStack() as stack:
        sessions = []
        for _ in range(clients):
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=CALL_TIMEOUT_S))
            sessions.append(
                await stack.enter_async_context(
                    Client(streamable_http_client(url, http_client=http))
                )
            )
        times: list[float] = []

        async def loop(client: Client, share: int) -> None:
            for _ in range(share):
                t0 = time.perf_counter()
                result = await client.call_tool("run_python_code", CALL)
                times.append(time.perf_counter() - t0)
                assert _ok(result), result

        await asyncio.gather(*(loop(c, WARM_CALLS) for c in sessions))
        times.clear()
        shares = [calls // clients + (i < calls % clients) for i in range(clients)]
        with _sampled(pid, spy, label):
            cpu, began = _cpu_s(pid), time.perf_counter()
            await asyncio.gather(*(loop(c, n) for c, n in zip(sessions, shares, strict=True)))
            wall, cpu = time.perf_counter() - began, _cpu_s(pid) - cpu
        return Figures(tuple(times), wall, cpu)


def _http(
    tree: Path, policy: Path, calls: int, clients: int, spy: Path | None, label: str
) -> Figures:
    with tempfile.TemporaryDirectory(prefix="sg-overhead-") as state:
        port = free_port()
        argv = [sys.executable, "-m", "runner", "serve", "--transport", "streamable-http"]
        argv += ["--host", HOST, "--port", str(port), "--policy", str(policy)]
        argv += ["--state-dir", state]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        server = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _listening(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server of {tree} did not start")
                time.sleep(0.1)
            url = f"http://{HOST}:{port}/mcp"
            return asyncio.run(_http_calls(url, clients, calls, server.pid, spy, label))
        finally:
            stop_server(server)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per part")
    parser.add_argument("--clients", type=int, default=8, help="HTTP clients")
    parser.add_argument("--policy", action="append", choices=("default", "eval-harness"))
    parser.add_argument("--no-http", action="store_true", help="stdio only")
    parser.add_argument("--py-spy", type=Path, help="folder for py-spy's collapsed stacks")
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree or [REPO]]
    policies = args.policy or ["default", "eval-harness"]
    print(f"{len(trees)} tree(s), {args.calls} calls per part, {os.cpu_count()} cores")
    for name in policies:
        for tree in trees:
            policy = tree / "policies" / f"{name}.yaml"
            tag = f"{tree.name}-{name}"
            # The shipped default policy allows 120 executions a minute per grant.
            stdio_calls = min(args.calls, 100) if name == "default" else args.calls
            stdio = asyncio.run(_stdio(tree, policy, stdio_calls, args.py_spy, f"{tag}-stdio"))
            print(f"{name:<13} {tree!s:<28} stdio back to back   {stdio.line()}", flush=True)
            if args.no_http or name == "default":
                continue
            http = _http(tree, policy, args.calls, args.clients, args.py_spy, f"{tag}-http")
            print(
                f"{name:<13} {tree!s:<28} http x{args.clients:<2}             {http.line()}",
                flush=True,
            )


if __name__ == "__main__":
    main()
