"""The server's own CPU per call (everything outside the wasm guest), side by side for source
trees: back-to-back `run_python_code` over MCP stdio and over streamable HTTP with N clients.

Run on demand (not a test):
`python benchmarks/runner_overhead.py [--tree PATH ...] [--calls N] [--clients 8]
[--policy default|eval-harness ...] [--legacy] [--service] [--bare] [--py-spy DIR]`.

Each tree (default: this one) is served with `PYTHONPATH=TREE`, by this interpreter, or, for
another tree with a `.venv`, by that venv's python (its own dependencies), so a worktree of an
older commit (`git worktree add --detach DIR REV`) runs its own code. For each
tree and policy: N back-to-back calls of
`run_python_code(code="out = 'hello'", variable_to_return="out")` over one stdio session (p50,
p95), then N calls shared by `--clients` streamable-HTTP clients (calls/s, p50), and with
`--legacy` the same by clients of the handshake era (sessions, answers as event streams).
With `--service`, first each tree's `Service.call_tool` alone (`_service_cpu.py`: the runner
and the gate with a fake engine, no MCP, no worker); with `--bare`, the MCP SDK alone
(`_bare_server.py`: a tool that answers at once), the floor under any server on the SDK.
Around each timed part the CPU (user + system, psutil) of the server process (its threads
included) is read, of its engine worker processes (its descendants) and of this process (the
clients), each divided by the calls. With `--py-spy DIR`, py-spy (if on PATH) samples the
server (the thread holding the GIL, without pausing it) during the timed part and leaves raw
stacks there.
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
import psutil
from _figures import percentile
from _http_server import HOST, START_TIMEOUT_S, free_port, stop_server, tree_python
from _proc import CpuSplit
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[1]
BARE_SERVER = Path(__file__).resolve().with_name("_bare_server.py")
SERVICE_CPU = Path(__file__).resolve().with_name("_service_cpu.py")
SERVICE_TIMEOUT_S = 600.0
CALL = {"code": "out = 'hello'", "variable_to_return": "out"}
WARM_CALLS = 10
CALL_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Figures:
    """One timed part: round trips (seconds), wall time, the server's CPU seconds, its
    engine workers' (descendant processes') CPU seconds and this client process's."""

    times: tuple[float, ...]
    wall_s: float
    cpu: CpuSplit

    def line(self) -> str:
        calls = len(self.times)
        return (
            f"p50 {percentile(list(self.times), 0.5) * 1000:6.2f} ms  "
            f"p95 {percentile(list(self.times), 0.95) * 1000:6.2f} ms  "
            f"{calls / self.wall_s:6.1f} calls/s  {self.cpu.per_call_ms(calls)}"
        )


def _server_pid(state_dir: str) -> int:
    """The server process whose command line names `state_dir` (made by this run; its
    workers' do not)."""
    for process in psutil.process_iter(["cmdline"]):
        if state_dir in (process.info["cmdline"] or ()):
            return int(process.pid)
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
        "--nonblocking",
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


def _argv(tree: Path, policy: Path | None, state: str, port: int | None) -> list[str]:
    """The command line of a server of `tree` (on stdio without a `port`); the SDK-alone
    server (`_bare_server.py`) without a `policy`. Each names `state`, to be found by it."""
    if policy is None:
        transport = ["stdio"] if port is None else ["http", str(port)]
        return [sys.executable, str(BARE_SERVER), *transport, state]
    argv = [tree_python(tree), "-m", "runner", "serve", "--state-dir", state]
    argv += ["--policy", str(policy)]
    if port is not None:
        argv += ["--transport", "streamable-http", "--host", HOST, "--port", str(port)]
    return argv


async def _stdio(
    tree: Path, policy: Path | None, calls: int, spy: Path | None, label: str
) -> Figures:
    with tempfile.TemporaryDirectory(prefix="sg-overhead-") as state:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        command, *args = _argv(tree, policy, state, None)
        params = StdioServerParameters(command=command, args=args, env=env, cwd=str(tree))
        async with Client(params, read_timeout_seconds=CALL_TIMEOUT_S) as client:
            for _ in range(WARM_CALLS):
                assert _ok(await client.call_tool("run_python_code", CALL))
            pid = _server_pid(state)
            times = []
            cpu = CpuSplit(pid)
            with _sampled(pid, spy, label):
                cpu.start()
                began = time.perf_counter()
                for _ in range(calls):
                    t0 = time.perf_counter()
                    result = await client.call_tool("run_python_code", CALL)
                    times.append(time.perf_counter() - t0)
                    assert _ok(result), result
                wall = time.perf_counter() - began
                cpu.stop()
            return Figures(tuple(times), wall, cpu)


async def _http_calls(
    url: str, clients: int, calls: int, pid: int, spy: Path | None, label: str, *, legacy: bool
) -> Figures:
    async with contextlib.AsyncExitStack() as stack:
        sessions = []
        for _ in range(clients):
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=CALL_TIMEOUT_S))
            sessions.append(
                await stack.enter_async_context(
                    Client(
                        streamable_http_client(url, http_client=http),
                        mode="legacy" if legacy else "auto",
                    )
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
        cpu = CpuSplit(pid)
        with _sampled(pid, spy, label):
            cpu.start()
            began = time.perf_counter()
            await asyncio.gather(*(loop(c, n) for c, n in zip(sessions, shares, strict=True)))
            wall = time.perf_counter() - began
            cpu.stop()
        return Figures(tuple(times), wall, cpu)


def _http(
    tree: Path,
    policy: Path | None,
    calls: int,
    clients: int,
    spy: Path | None,
    label: str,
    *,
    legacy: bool = False,
) -> Figures:
    with tempfile.TemporaryDirectory(prefix="sg-overhead-") as state:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(tree)}
        argv = _argv(tree, policy, state, port)
        server = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _listening(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server of {tree} did not start")
                time.sleep(0.1)
            url = f"http://{HOST}:{port}/mcp"
            return asyncio.run(
                _http_calls(url, clients, calls, server.pid, spy, label, legacy=legacy)
            )
        finally:
            stop_server(server)


def _service(tree: Path, policy: Path, calls: int) -> str:
    """`Service.call_tool` of `tree` alone (a fake engine, no MCP), in a child process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [tree_python(tree), str(SERVICE_CPU), str(policy), str(calls)]
    done = subprocess.run(
        argv, env=env, cwd=tree, capture_output=True, text=True, timeout=SERVICE_TIMEOUT_S
    )
    if done.returncode != 0:
        raise SystemExit(f"the service of {tree} failed: {done.stderr.strip()[-500:]}")
    cpu_us, wall_us = (float(x) for x in done.stdout.split())
    return f"CPU {cpu_us / 1000:5.2f} ms/call  wall {wall_us / 1000:5.2f} ms/call"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _report_bare(args: argparse.Namespace) -> None:
    """The SDK-alone rows: stdio, then HTTP (modern, and legacy when asked)."""
    label = "SDK alone"
    stdio = asyncio.run(_stdio(REPO, None, args.calls, args.py_spy, "bare-stdio"))
    print(f"{label:<42} stdio back to back   {stdio.line()}", flush=True)
    if args.no_http:
        return
    for legacy in (False, True) if args.legacy else (False,):
        http = _http(REPO, None, args.calls, args.clients, args.py_spy, "bare-http", legacy=legacy)
        mode = "legacy" if legacy else "      "
        print(f"{label:<42} http x{args.clients:<2} {mode}      {http.line()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per part")
    parser.add_argument("--clients", type=int, default=8, help="HTTP clients")
    parser.add_argument("--policy", action="append", choices=("default", "eval-harness"))
    parser.add_argument("--no-http", action="store_true", help="stdio only")
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="also HTTP clients of the handshake era (initialize, Mcp-Session-Id, SSE answers)",
    )
    parser.add_argument(
        "--service",
        action="store_true",
        help="also each tree's Service.call_tool alone (a fake engine, no MCP, no worker)",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="first the MCP SDK alone (a tool answering at once): the floor under sandgate",
    )
    parser.add_argument("--py-spy", type=Path, help="folder for py-spy's collapsed stacks")
    args = parser.parse_args()
    trees = [t.resolve() for t in args.tree or [REPO]]
    policies = args.policy or ["default", "eval-harness"]
    print(f"{len(trees)} tree(s), {args.calls} calls per part, {os.cpu_count()} cores")
    if args.bare:
        _report_bare(args)
    for name in policies:
        for tree in trees:
            policy = tree / "policies" / f"{name}.yaml"
            tag = f"{tree.name}-{name}"
            # The shipped default policy allows 120 executions a minute per grant.
            stdio_calls = min(args.calls, 100) if name == "default" else args.calls
            if args.service:
                alone = _service(tree, policy, stdio_calls)
                print(f"{name:<13} {tree!s:<28} service alone        {alone}", flush=True)
            stdio = asyncio.run(_stdio(tree, policy, stdio_calls, args.py_spy, f"{tag}-stdio"))
            print(f"{name:<13} {tree!s:<28} stdio back to back   {stdio.line()}", flush=True)
            if args.no_http or name == "default":
                continue
            http = _http(tree, policy, args.calls, args.clients, args.py_spy, f"{tag}-http")
            print(
                f"{name:<13} {tree!s:<28} http x{args.clients:<2}             {http.line()}",
                flush=True,
            )
            if args.legacy:
                old = _http(
                    tree,
                    policy,
                    args.calls,
                    args.clients,
                    args.py_spy,
                    f"{tag}-legacy",
                    legacy=True,
                )
                print(
                    f"{name:<13} {tree!s:<28} http x{args.clients:<2} legacy      {old.line()}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
