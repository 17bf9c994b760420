"""A worker's one long-lived background thread (`sandboxes/wasm/_behind.py`): its jobs run in
order on one thread, a call waits for them, and a worker's last guest is closed by the next
call's start and at the worker's exit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxes.wasm import _direct, _worker
from sandboxes.wasm._behind import Behind
from sandboxes.wasm._embedded import EmbeddedGuest

from ._requests import code_request

pytestmark = pytest.mark.wasm

WAIT_S = 60.0


def test_jobs_run_in_order_on_one_thread_and_one_failing_stops_none() -> None:
    behind = Behind("test")
    ran: list[tuple[str, int]] = []

    def job(name: str) -> Any:
        return lambda: ran.append((name, threading.get_ident()))

    def failing() -> None:
        raise ValueError("this job fails")

    behind.submit(job("a"))
    behind.submit(failing)
    behind.submit(job("b"))
    behind.settle()
    assert [name for name, _ in ran] == ["a", "b"]
    behind.submit(job("c"))
    behind.settle()
    assert len({ident for _, ident in ran}) == 1, "every job ran on the same thread"
    assert ran[0][1] != threading.get_ident() and behind.jobs_run == 4
    behind.close()
    with pytest.raises(RuntimeError):
        behind.submit(job("d"))


def test_closing_runs_the_jobs_queued_before() -> None:
    behind = Behind("test")
    release = threading.Event()
    ran: list[str] = []
    behind.submit(lambda: ran.append("first") if release.wait(WAIT_S) else None)
    behind.submit(lambda: ran.append("second"))
    closer = threading.Thread(target=behind.close)
    closer.start()
    release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive() and ran == ["first", "second"]


class _Worker:
    """A worker's state in this process; its calls made on a thread with a guest's stack, as
    the worker's loop makes them (the answer, then `finish`)."""

    def __init__(self, root: Path) -> None:
        self.files, self.site = root / "files", root / "site"
        self.files.mkdir()
        self.site.mkdir()
        self.host = _worker._Host()
        warmed = _worker._warm(self.host, {"slots_dir": str(root / "slots"), "derive_after": 10**9})
        assert warmed["ok"] and warmed["embedded"], warmed

    def call(self, source: str) -> tuple[dict[str, Any], Any]:
        """The answer, and the guest that served it (not closed yet when the answer is sent)."""
        done: list[tuple[dict[str, Any], Any]] = []
        failed: list[BaseException] = []

        def serve() -> None:
            try:
                request = code_request(self.files, self.site, source)
                answer = _worker._run(self.host, request)
                used = self.host.used
                self.host.finish(request)
                done.append((answer, used))
            except BaseException as exc:
                failed.append(exc)

        _direct.start_thread(serve, "serve").join(WAIT_S)
        if failed:
            raise failed[0]
        assert done, "the call did not end in time"
        return done[0]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[_Worker]:
    made = _Worker(tmp_path)
    try:
        yield made
    finally:
        made.host.close()


def test_the_last_guest_is_closed_by_the_next_calls_start_and_at_exit(worker: _Worker) -> None:
    worker.call("pass")  # the shape's first call: its image is taken after it
    worker.host.settle()
    threads = threading.active_count()
    tid = worker.host.behind.tid
    guests: list[EmbeddedGuest] = []
    for _ in range(3):
        answer, used = worker.call("print(6 * 7)")
        assert answer["embedded"] and answer["stdout"] == "42\n", answer
        assert isinstance(used, EmbeddedGuest)
        assert all(g.closed for g in guests), "the guest before was closed by this call's start"
        guests.append(used)
    assert worker.host.behind.tid == tid and threading.active_count() == threads
    worker.host.close()
    assert all(g.closed for g in guests), "the worker's exit closes its last guest"
