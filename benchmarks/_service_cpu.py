"""The service alone: CPU per `Service.call_tool` of the source tree on `PYTHONPATH` (the
runner and the gate, with a fake engine that answers at once; no MCP, no worker), for
`runner_overhead.py --service`. Run: `python _service_cpu.py POLICY CALLS`; prints the mean
CPU µs per call (this process, its threads included) and the mean wall µs.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from runner import Caller, Config, open_service
from sandboxes import ExecutionPlan, FakeEngine, RunResult, Usage

ARGS = {"code": "out = 'hello'", "variable_to_return": "out"}
WARM_CALLS = 100


def _hello(plan: ExecutionPlan) -> RunResult:
    return RunResult(
        status="ok",
        stdout="",
        stderr="",
        exit_code=0,
        usage=Usage(wall_ms=1.0),
        value="hello",
        value_found=True,
    )


async def _measure(policy: Path, calls: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="sg-service-") as state:
        engine = FakeEngine(_hello)
        config = Config(state_dir=Path(state), policy_path=policy)
        async with open_service(config, engines={"wasm": engine, "pyodide": engine}) as service:
            caller = Caller(grant="local", session="conn:bench")
            for _ in range(WARM_CALLS):
                result = await service.call_tool("run_python_code", ARGS, caller)
            if result.is_error:
                raise SystemExit(f"the warm-up call failed: {result.content}")
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(calls):
                await service.call_tool("run_python_code", ARGS, caller)
                engine.plans.clear()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / calls * 1e6, wall / calls * 1e6


if __name__ == "__main__":
    cpu_us, wall_us = asyncio.run(_measure(Path(sys.argv[1]), int(sys.argv[2])))
    print(f"{cpu_us:.1f} {wall_us:.1f}")
