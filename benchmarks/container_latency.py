"""Latency of `print('hello')` through the container engine vs. a plain `docker run`, per runtime.

Run on demand (dockerd up, image built: `sudo bash scripts/docker-setup.sh`):
`python benchmarks/container_latency.py [--calls N] [--runtimes runc,runsc]`. For each runtime it
times N engine runs with a warm container waiting (the pool is refilled between calls, outside
the timing), N runs back to back (the pool drains when calls come faster than containers
start), and N `docker run --rm --network none IMAGE python3 -c "print('hello')"` in the same
run, then prints p50/p95 and the ratios (target: warm p50 <= 0.1x plain docker run).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _figures import percentile

from sandboxes import ExecutionPlan, Limits, Program, WorkspacePaths
from sandboxes.container import DEFAULT_IMAGE, ContainerEngine, Runtime

WARM_WAIT_S = 120.0


def _plan(workspace: WorkspacePaths, n: int) -> ExecutionPlan:
    return ExecutionPlan(
        decision_id=f"bench-{n}",
        engine="container",
        program=Program("code", "print('hello')"),
        limits=Limits(wall_timeout_s=30),
        workspace=workspace,
        session_id="bench",
    )


async def _engine_times(runtime: Runtime, calls: int, scratch: Path) -> tuple[list[float], ...]:
    files, site = scratch / "files", scratch / "site"
    files.mkdir()
    site.mkdir()
    workspace = WorkspacePaths(files, site)
    warm: list[float] = []
    sustained: list[float] = []
    engine = ContainerEngine(runtime=runtime, pool_size=2, pool_dir=scratch / "pool")
    async with engine:
        for n in range(calls + 3):
            if not await engine.wait_warm(WARM_WAIT_S):
                raise SystemExit(f"{runtime}: the pool did not fill in {WARM_WAIT_S:g} s")
            began = time.perf_counter()
            result = await engine.run(_plan(workspace, n))
            elapsed = time.perf_counter() - began
            assert result.status == "ok" and result.stdout == "hello\n", result
            if n >= 3:  # the first runs warm the host's caches
                warm.append(elapsed)
        await engine.wait_warm(WARM_WAIT_S)
        for n in range(calls):
            began = time.perf_counter()
            result = await engine.run(_plan(workspace, calls + n))
            sustained.append(time.perf_counter() - began)
            assert result.status == "ok", result
        stats = engine.stats()
    print(f"{runtime}: pool served {stats.warm_runs} runs warm, {stats.cold_runs} cold")
    return warm, sustained


def _docker_run_times(runtime: Runtime, calls: int, image: str) -> list[float]:
    docker = shutil.which("docker") or "docker"
    command = [docker, "run", "--rm", "--network", "none", "--runtime", runtime, image]
    command += ["python3", "-c", "print('hello')"]
    times: list[float] = []
    for _ in range(calls):
        began = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - began)
        assert done.stdout == b"hello\n", done
    return times


def _line(label: str, values: list[float]) -> str:
    p50, p95 = percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000
    return f"  {label:<34} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--runtimes", default="runc,runsc")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    args = parser.parse_args()
    runtimes: list[Runtime] = []
    for name in args.runtimes.split(","):
        if name not in ("runc", "runsc"):
            raise SystemExit(f"--runtimes: expected runc and/or runsc, got {name!r}")
        runtimes.append("runc" if name == "runc" else "runsc")
    print(f"calls per measurement: {args.calls}")
    for runtime in runtimes:
        with tempfile.TemporaryDirectory() as scratch:
            warm, sustained = asyncio.run(_engine_times(runtime, args.calls, Path(scratch)))
        plain = _docker_run_times(runtime, args.calls, args.image)
        print(f"{runtime}:")
        print(_line("engine, warm container waiting", warm))
        print(_line("engine, back to back (pool of 2)", sustained))
        print(_line("docker run --rm (plain)", plain))
        ratio = percentile(warm, 0.5) / percentile(plain, 0.5)
        ratio_b2b = percentile(sustained, 0.5) / percentile(plain, 0.5)
        verdict = "meets" if ratio <= 0.1 else "misses"
        print(f"  warm p50 / docker run p50 = {ratio:.3f} ({verdict} the 0.1x target)")
        print(f"  back-to-back p50 / docker run p50 = {ratio_b2b:.3f}")


if __name__ == "__main__":
    main()
