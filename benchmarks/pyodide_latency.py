"""Latency of `1+1` on the pyodide engine: warm session vs. freshly started Pyodide processes.

Run on demand: `python benchmarks/pyodide_latency.py [--calls N] [--fresh M]`. Needs the
assets (`sandgate setup pyodide`). In one run it times:

- warm: N sequential `engine.run` calls of `1+1` in one session whose process came from the
  pool (the path every call after a session's first takes);
- fresh from the snapshot: M `state: fresh` runs on an engine with an empty pool, so each call
  boots a jailed Deno from the memory snapshot before running (what the pool hides);
- fresh without a snapshot: M plain `deno run` processes that `loadPyodide()` and run `1+1`
  (what an engine without pool or snapshot would pay per call).

It prints p50/p95 of each and the ratios to the warm p50 (target: warm p50 < 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _figures import percentile

from sandboxes import ExecutionPlan, Limits, Program, StateMode, WorkspacePaths
from sandboxes.pyodide import PyodideEngine, default_assets_dir
from sandboxes.pyodide._assets import deno_common_flags, deno_environment, find_deno, locate

COLD_SCRIPT = """
const { loadPyodide } = await import("file://" + Deno.args[0] + "/pyodide.mjs");
const py = await loadPyodide({ indexURL: Deno.args[0] + "/" });
if (py.runPython("1+1") !== 2) throw new Error("wrong answer");
"""


def _plan(workspace: WorkspacePaths, session: str, state: StateMode) -> ExecutionPlan:
    return ExecutionPlan(
        decision_id="bench",
        engine="pyodide",
        program=Program("code", "1+1", final_expression=True),
        limits=Limits(wall_timeout_s=60.0),
        workspace=workspace,
        session_id=session,
        state=state,
    )


async def _warm(calls: int, workspace: WorkspacePaths) -> list[float]:
    times: list[float] = []
    async with PyodideEngine(pool_size=1) as engine:
        await engine.wait_ready()
        for _ in range(10):  # warm-up: the session holds its process, V8 has compiled the path
            await engine.run(_plan(workspace, "warm", "persistent"))
        for _ in range(calls):
            began = time.perf_counter()
            result = await engine.run(_plan(workspace, "warm", "persistent"))
            times.append(time.perf_counter() - began)
            assert result.value == "2", result
    return times


async def _fresh_snapshot(runs: int, workspace: WorkspacePaths) -> list[float]:
    times: list[float] = []
    async with PyodideEngine(pool_size=0) as engine:
        for i in range(runs):
            began = time.perf_counter()
            result = await engine.run(_plan(workspace, f"fresh-{i}", "fresh"))
            times.append(time.perf_counter() - began)
            assert (result.value, result.state) == ("2", "fresh"), result
    return times


def _fresh_cold(runs: int, folder: Path) -> list[float]:
    assets = locate(default_assets_dir())
    if assets is None:
        raise SystemExit("the Pyodide assets are missing: run `sandgate setup pyodide`")
    script = folder / "cold.mjs"
    script.write_text(COLD_SCRIPT)
    command = [
        find_deno(),
        "run",
        *deno_common_flags(),
        f"--allow-read={assets.pyodide_dir}",
        str(script),
        str(assets.pyodide_dir),
    ]
    times: list[float] = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, env=deno_environment(assets), check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return times


def _line(label: str, values: list[float], warm_p50: float | None = None) -> float:
    p50, p95 = percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000
    ratio = f"  {p50 / warm_p50:7.1f}x warm p50" if warm_p50 else ""
    print(
        f"{label:<34} n={len(values):<4} p50 {p50:8.1f} ms  p95 {p95:8.1f} ms  "
        f"mean {statistics.mean(values) * 1000:8.1f} ms{ratio}"
    )
    return p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--fresh", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        workspace = WorkspacePaths(root / "files", root / "site")
        workspace.files.mkdir()
        workspace.site.mkdir()
        warm = asyncio.run(_warm(args.calls, workspace))
        snap = asyncio.run(_fresh_snapshot(args.fresh, workspace))
        cold = _fresh_cold(args.fresh, root)
    warm_p50 = _line("warm session (pooled process)", warm)
    _line("fresh process, memory snapshot", snap, warm_p50)
    _line("fresh process, plain loadPyodide", cold, warm_p50)
    verdict = "met" if warm_p50 < 20 else "missed"
    print(f"target warm p50 < 20 ms: {verdict}")


if __name__ == "__main__":
    main()
