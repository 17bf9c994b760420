"""Throughput of `sandgate serve --ray` with one front end over 1, 2 and 3 Ray nodes, and of
plain `sandgate serve` (no Ray) in the same run.

Run on demand (not a test): `python benchmarks/cluster.py [--clients 8] [--calls 240]`.

Starts a Redis (unix socket) and a local Ray cluster (`ray start --head`, then one more
`ray start --address` per step, each node with `--num-cpus=1` and its own temp folder; every
node runs one WASM worker). For each node count a fresh front end is started and N MCP clients
(legacy sessions, so each client is its own session, placed on the nodes by the front end)
share a fixed number of `run_python_code("print('hello')")` calls. The baseline is plain
`sandgate serve --workers 1` (one node's worth of workers) on the same policy. Prints calls/s,
p50/p95 latency, the ratio to one node, and the front end's own CPU per call (its process's
user+system time over the measured calls). Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from _http_server import HOST, free_port, start_server, stop_server
from _proc import descendants_cpu_s, process_cpu_s
from load_http import Figures, drive, hello_callers

RAY_IP = "127.0.0.2"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_memory_monitor_refresh_ms": "0",
}
WARM_CALLS_PER_CLIENT = 3


@dataclass(frozen=True, slots=True)
class Measured:
    """One workload's figures and the front end's CPU time over its measured calls."""

    figures: Figures
    front_cpu_s: float

    def row(self, one: float) -> str:
        f = self.figures
        cpu_ms = 1000 * self.front_cpu_s / f.calls
        return (
            f"{f.name:<26} {f.calls:>6} {f.errors:>6} {f.rate:>8.1f} "
            f"{f.percentile_ms(0.5):>8.1f} {f.percentile_ms(0.95):>8.1f} "
            f"{f.rate / one:>7.2f} {cpu_ms:>12.2f}"
        )


def policy_text(redis_url: str) -> str:
    return (
        "version: '1'\ndefault: deny\n"
        "quotas:\n  timeout_s: 10\n  memory_mb: 256\n  network: none\n"
        "all_tools:\n  engine: wasm\n  state: fresh\n"
        f"state:\n  backend: redis\n  url: '{redis_url}'\n"
        "audit:\n  sink: redis\n"
        "server:\n  http_sessions: redis\n"
        "limits:\n  - {counter: calls, window: minute, max: 1000000, scope: global}\n"
        "tools:\n  run_python_code: {}\n"
    )


def serve(
    port: int, policy: Path, state: Path, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """A server with one WASM worker (Ray's settings in its environment), once it listens."""
    return start_server(
        port, policy=policy, state_dir=state, extra=("--workers", "1", *extra), env=RAY_ENV
    )


def _cpu_s(pid: int) -> float:
    """User + system seconds of `pid` and its descendants so far."""
    return process_cpu_s(pid) + descendants_cpu_s(pid)


async def measure(name: str, url: str, pid: int, clients: int, calls: int) -> Measured:
    """Warm `clients` legacy MCP clients (each its own session), then time `calls` calls and
    the CPU the process `pid` spends on them."""
    async with hello_callers(url, clients, legacy=True) as callers:
        await drive("warm-up", clients * WARM_CALLS_PER_CLIENT, callers)
        cpu0 = _cpu_s(pid)
        figures = await drive(name, calls, callers)
        return Measured(figures, _cpu_s(pid) - cpu0)


def ray_start(ray: str, argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([ray, "start", *argv], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ray start failed:\n{done.stdout}\n{done.stderr}")


def kill_ray(root: Path) -> None:
    """Kill this benchmark's Ray processes (found by their temp folder; no other Ray)."""
    mark = str(root)
    victims = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.pid != os.getpid() and mark in " ".join(p.info["cmdline"] or [])
    ]
    for process in list(victims):
        with contextlib.suppress(psutil.Error):
            victims += process.children(recursive=True)
    for process in victims:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(victims, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=240)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="sg-bc-"))
    env = {**os.environ, **RAY_ENV}
    redis_proc = subprocess.Popen(
        [redis_server, "--port", "0", "--unixsocket", str(root / "r.sock"), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    redis_url = f"unix://{root / 'r.sock'}"
    policy = root / "policy.yaml"
    policy.write_text(policy_text(redis_url))
    results: list[Measured] = []
    ray_port = free_port()
    common = [f"--node-ip-address={RAY_IP}", "--num-cpus=1", "--disable-usage-stats"]
    common.append("--object-store-memory=80000000")
    try:
        deadline = time.monotonic() + 20
        while not (root / "r.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = free_port()
        plain = serve(port, policy, root / "plain")
        try:
            url = f"http://{HOST}:{port}/mcp"
            name = "plain serve (1 worker)"
            results.append(asyncio.run(measure(name, url, plain.pid, args.clients, args.calls)))
        finally:
            stop_server(plain)
        head = ["--head", f"--port={ray_port}", "--include-dashboard=false"]
        ray_start(ray, [*head, *common, f"--temp-dir={root / 'n1'}"], env)
        for nodes in range(1, args.nodes + 1):
            if nodes > 1:
                more = [
                    f"--address={RAY_IP}:{ray_port}",
                    *common,
                    f"--temp-dir={root / f'n{nodes}'}",
                ]
                ray_start(ray, more, env)
            port = free_port()
            front = serve(port, policy, root / "state", ("--ray", f"{RAY_IP}:{ray_port}"))
            try:
                url = f"http://{HOST}:{port}/mcp"
                name = f"--ray, {nodes} node(s)"
                results.append(asyncio.run(measure(name, url, front.pid, args.clients, args.calls)))
            finally:
                stop_server(front)
    finally:
        kill_ray(root)
        stop_server(redis_proc)
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.clients} clients, {args.calls} calls each workload, {os.cpu_count()} cores")
    print(
        f"{'workload':<26} {'calls':>6} {'errors':>6} {'calls/s':>8} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'x 1node':>7} {'FE cpu ms/call':>12}"
    )
    one = next(
        (m.figures.rate for m in results if "1 node" in m.figures.name), results[0].figures.rate
    )
    for measured in results:
        print(measured.row(one))
    print(
        "FE cpu: the front end's process alone for --ray; for plain serve, the whole server "
        "(its WASM worker included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
