"""The worker's workspace watchdog (`sandboxes/wasm/_watchdog.py`): one thread watches each
call's folders in turn, cancels the call whose folder passes its budget, and lets go of a call
before its watch returns, so a later call is never cancelled for an earlier one's folder."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sandboxes._files import DiskUsage, disk_usage
from sandboxes.wasm._watchdog import Watchdog, Watched

WAIT_S = 10.0
"""The longest any wait here lasts (the watchdog measures every 20 ms)."""


def _fill(folder: Path, count: int) -> None:
    folder.mkdir(exist_ok=True)
    for i in range(count):
        (folder / f"f{i}").write_bytes(b"x" * 8192)


def test_a_folder_past_its_budget_cancels_the_call(tmp_path: Path) -> None:
    dog = Watchdog()
    big = tmp_path / "big"
    _fill(big, 8)
    cancel = threading.Event()
    with dog.watching([(str(big), 4096, None)], cancel) as over:
        assert cancel.wait(WAIT_S), "the call past its budget must be cancelled"
    assert over and over[0] > 4096


def test_a_folder_past_its_inode_cap_cancels_the_call(tmp_path: Path) -> None:
    dog = Watchdog()
    many = tmp_path / "many"
    _fill(many, 5)
    cancel = threading.Event()
    with dog.watching([(str(many), 1 << 30, 3)], cancel) as over:
        assert cancel.wait(WAIT_S)
    assert over


def test_one_thread_serves_every_call_and_each_call_only_its_own_folders(tmp_path: Path) -> None:
    """Calls in turn: the same thread; a call under budget is never cancelled, even after its
    folder grows once its watch has ended; the next call over budget is."""
    seen: list[int] = []

    def measure(folder: Path, *, stop_after_files: int | None = None) -> DiskUsage:
        seen.append(threading.get_ident())
        return disk_usage(folder, stop_after_files=stop_after_files)

    dog = Watchdog(measure)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    _fill(second, 8)
    earlier = threading.Event()
    with dog.watching([(str(first), 1 << 20, None)], earlier) as over:
        pass
    _fill(first, 200)  # past the first call's budget now that its watch has ended
    later = threading.Event()
    with dog.watching([(str(second), 4096, None)], later) as later_over:
        assert later.wait(WAIT_S)
    assert later_over and not over
    assert not earlier.is_set(), "an ended call must never be cancelled"
    assert len(set(seen)) == 1, "one watchdog thread for every call"
    assert seen[0] != threading.get_ident()


def test_no_folders_starts_no_thread(tmp_path: Path) -> None:
    dog = Watchdog()
    with dog.watching([], threading.Event()) as over:
        assert over == []
    assert dog._thread is None


def test_one_call_at_a_time(tmp_path: Path) -> None:
    dog = Watchdog()
    watched: list[Watched] = [(str(tmp_path), 1 << 30, None)]
    with dog.watching(watched, threading.Event()):
        second = dog.watching(watched, threading.Event())
        with pytest.raises(RuntimeError, match="one at a time"):
            second.__enter__()


def test_a_call_wakes_the_thread_only_when_it_would_sleep_past_the_first_measure(
    tmp_path: Path,
) -> None:
    """Back to back, a call put in place while the thread waits for an earlier call's first
    measure (which comes before the new call's) costs no wake; a call after the thread went to
    wait for nothing wakes it once."""
    dog = Watchdog()
    watched: list[Watched] = [(str(tmp_path), 1 << 30, None)]

    def waits_for_the_call() -> bool:
        with dog._lock:
            return dog._lock.wait_for(
                lambda: dog._job is not None and dog._wakes_at == dog._job.due, WAIT_S
            )

    with dog.watching(watched, threading.Event()):  # starts the thread: no wake
        assert waits_for_the_call()
    with dog.watching(watched, threading.Event()):
        assert waits_for_the_call(), "the thread finds the next call by itself"
    assert dog.wakes == 0
    with dog._lock:
        assert dog._lock.wait_for(lambda: dog._wakes_at == float("inf"), WAIT_S)
    with dog.watching(watched, threading.Event()):
        assert waits_for_the_call()
    assert dog.wakes == 1
