"""Counter stores (SQLite and a real Redis): atomic all-or-nothing reservations, sliding
windows, commit/rollback, concurrency, restarts, and approvals kept beside the counters."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    ApprovalRecord,
    CounterSpec,
    CounterStore,
    RedisCounterStore,
    SqliteCounterStore,
    StateUnavailable,
    UnknownApproval,
)
from policies import _sqlite as sqlite_module
from policies._store import STALE_RESERVATION_S

NOW = 1_700_000_000.0
MINUTE = CounterSpec("calls|grant=alice", window_s=60.0, max=3)


def test_reserves_until_max_then_refuses(store: CounterStore) -> None:
    ids = [store.reserve([MINUTE], NOW + i) for i in range(3)]
    assert all(isinstance(i, str) for i in ids)
    assert store.reserve([MINUTE], NOW + 3) is None
    assert store.used(MINUTE, NOW + 3) == (3, NOW)


def test_window_slides_past_old_entries(store: CounterStore) -> None:
    for i in range(3):
        assert store.reserve([MINUTE], NOW + i) is not None
    assert store.reserve([MINUTE], NOW + 59.5) is None
    assert store.reserve([MINUTE], NOW + 60.5) is not None  # the entry at NOW left the window
    assert store.used(MINUTE, NOW + 60.5)[0] == 3


def test_all_or_nothing_across_counters(store: CounterStore) -> None:
    roomy = CounterSpec("roomy|global=*", 60.0, 100)
    tight = CounterSpec("tight|global=*", 60.0, 1)
    assert store.reserve([roomy, tight], NOW) is not None
    assert store.reserve([roomy, tight], NOW) is None
    assert store.used(roomy, NOW)[0] == 1  # the refused call reserved nothing on `roomy`


def test_increments_count_by_amount(store: CounterStore) -> None:
    big = CounterSpec("pkgs|grant=a", 60.0, 10, increment=4)
    assert store.reserve([big], NOW) is not None
    assert store.reserve([big], NOW) is not None
    assert store.reserve([big], NOW) is None  # 8 + 4 > 10
    assert store.reserve([CounterSpec("pkgs|grant=a", 60.0, 10, increment=2)], NOW) is not None
    assert store.used(big, NOW)[0] == 10


def test_same_counter_with_two_windows_counts_each_call_once(store: CounterStore) -> None:
    per_minute = CounterSpec("x|grant=a", 60.0, 2)
    per_hour = CounterSpec("x|grant=a", 3600.0, 3)
    assert store.reserve([per_minute, per_hour], NOW) is not None
    assert store.reserve([per_minute, per_hour], NOW + 1) is not None
    assert store.reserve([per_minute, per_hour], NOW + 2) is None  # minute full
    assert store.reserve([per_minute, per_hour], NOW + 61) is not None  # minute slid
    assert store.reserve([per_minute, per_hour], NOW + 122) is None  # hour full (3)
    assert store.used(per_hour, NOW + 122)[0] == 3


def test_rollback_frees_and_commit_keeps(store: CounterStore) -> None:
    first = store.reserve([MINUTE], NOW)
    second = store.reserve([MINUTE], NOW)
    assert first is not None and second is not None
    store.rollback(first, now=NOW)
    store.commit(second, now=NOW)
    store.rollback(second, now=NOW)  # committed: no effect
    assert store.used(MINUTE, NOW)[0] == 1


def test_fifty_threads_against_max_ten_get_exactly_ten(store: CounterStore) -> None:
    spec = CounterSpec("burst|global=*", 60.0, 10)
    results: list[str | None] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def worker() -> None:
        start.wait(timeout=30)
        got = store.reserve([spec], NOW)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 50
    assert sum(r is not None for r in results) == 10
    assert store.used(spec, NOW)[0] == 10


def test_approvals_resolve_once_and_are_used_once(store: CounterStore) -> None:
    record = ApprovalRecord(
        "ap1", "binding-1", "run_code", "alice", "s1", "h" * 64, "pending", NOW, NOW + 300, 300.0
    )
    store.add_approval(record)
    assert store.find_approval("binding-1", NOW) == record
    resolved = store.resolve_approval("ap1", True, "bob", NOW + 10)
    assert (resolved.status, resolved.resolved_by, resolved.expires_at) == (
        "approved",
        "bob",
        NOW + 310,
    )
    with pytest.raises(UnknownApproval) as raised:
        store.resolve_approval("ap1", False, "bob", NOW + 11)
    assert raised.value.status == "approved"
    assert store.use_approval("ap1", NOW + 20) is True
    assert store.use_approval("ap1", NOW + 21) is False
    assert store.find_approval("binding-1", NOW + 22) is None
    got = store.get_approval("ap1")
    assert got is not None and got.status_at(NOW + 22) == "used"


def test_an_answer_bound_to_another_call_is_unknown_and_changes_nothing(
    store: CounterStore,
) -> None:
    record = ApprovalRecord(
        "ap3", "binding-3", "run_code", "alice", "s1", "h" * 64, "pending", NOW, NOW + 300, 300.0
    )
    store.add_approval(record)
    with pytest.raises(UnknownApproval) as raised:
        store.resolve_approval("ap3", True, "client:bob", NOW + 1, binding="binding-other")
    assert (raised.value.approval_id, raised.value.status) == ("ap3", None)
    assert store.get_approval("ap3") == record
    resolved = store.resolve_approval("ap3", True, "client:alice", NOW + 2, binding="binding-3")
    assert (resolved.status, resolved.resolved_by) == ("approved", "client:alice")


def test_unknown_and_expired_approvals(store: CounterStore) -> None:
    with pytest.raises(UnknownApproval) as raised:
        store.resolve_approval("nope", True, "bob", NOW)
    assert raised.value.status is None
    store.add_approval(
        ApprovalRecord("ap2", "b2", "run_code", "a", "s", "h", "pending", NOW, NOW + 5, 5.0)
    )
    assert store.find_approval("b2", NOW + 6) is None
    with pytest.raises(UnknownApproval) as expired:
        store.resolve_approval("ap2", True, "bob", NOW + 6)
    assert expired.value.status == "expired"


def test_closed_store_reports_unavailable(store: CounterStore) -> None:
    store.close()
    with pytest.raises(StateUnavailable):
        store.reserve([MINUTE], NOW)


def test_sqlite_counters_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteCounterStore(path)
    for _ in range(3):
        assert first.reserve([MINUTE], NOW) is not None
    first.close()
    second = SqliteCounterStore(path)
    try:
        assert second.reserve([MINUTE], NOW + 1) is None
        assert second.used(MINUTE, NOW + 1)[0] == 3
    finally:
        second.close()


def test_sqlite_stale_reservation_counts_as_committed(sqlite_store: SqliteCounterStore) -> None:
    reservation = sqlite_store.reserve([CounterSpec("day|global=*", 86400.0, 5)], NOW)
    assert reservation is not None
    sqlite_store.rollback(reservation, now=NOW + STALE_RESERVATION_S + 1)
    assert sqlite_store.used(CounterSpec("day|global=*", 86400.0, 5), NOW + 3602)[0] == 1


def test_sqlite_is_atomic_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    SqliteCounterStore(path).close()
    script = textwrap.dedent(f"""
        from policies import CounterSpec, SqliteCounterStore
        store = SqliteCounterStore({str(path)!r})
        spec = CounterSpec("procs|global=*", 60.0, 25)
        print(sum(store.reserve([spec], {NOW!r}) is not None for _ in range(20)))
        store.close()
    """)
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    granted = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(granted) == 25


def test_sqlite_locked_by_another_writer_is_unavailable(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state.sqlite3"
    store = SqliteCounterStore(path, busy_timeout_s=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StateUnavailable) as raised:
            store.reserve([MINUTE], NOW)
        assert raised.value.backend == "sqlite"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()


@pytest.mark.redis
def test_redis_counters_survive_a_new_client(redis_url: str) -> None:
    first = RedisCounterStore(redis_url, prefix="survive:")
    for _ in range(3):
        assert first.reserve([MINUTE], NOW) is not None
    first.close()
    second = RedisCounterStore(redis_url, prefix="survive:")
    try:
        assert second.reserve([MINUTE], NOW + 1) is None
    finally:
        second.close()


def test_redis_unreachable_is_unavailable() -> None:
    store = RedisCounterStore("redis://127.0.0.1:1/0", timeout_s=1.0)
    with pytest.raises(StateUnavailable) as raised:
        store.reserve([MINUTE], NOW)
    assert raised.value.backend == "redis"


WINDOWS = {"a": 30.0, "b": 90.0}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["reserve", "rollback", "commit"]),
            st.sampled_from(["a", "b"]),
            st.floats(0, 40),  # time step
            st.integers(1, 4),  # increment
        ),
        max_size=40,
    )
)
def test_sqlite_windows_match_a_naive_model(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[str, str, float, int]],
) -> None:
    """Running totals, rollbacks in the middle and pruning agree with summing every entry."""
    store = SqliteCounterStore(tmp_path_factory.mktemp("model") / "state.sqlite3")
    monkeypatch.setattr(sqlite_module, "_PRUNE_EVERY", 1)  # prune on every reservation
    entries: dict[str, tuple[str, float, int]] = {}  # reservation -> (key, ts, amount)
    committed: set[str] = set()
    now = NOW
    try:
        for action, key, step, increment in steps:
            now += step
            window = WINDOWS[key]  # each counter has its window (pruning relies on it)
            spec = CounterSpec(key, window, 6, increment)
            model = sum(a for k, ts, a in entries.values() if k == key and ts > now - window)
            assert store.used(spec, now)[0] == model
            if action == "reserve":
                got = store.reserve([spec], now)
                assert (got is not None) == (model + increment <= 6)
                if got is not None:
                    entries[got] = (key, now, increment)
            elif open_ids := sorted(set(entries) - committed):
                victim = open_ids[len(open_ids) // 2]
                if action == "rollback":
                    store.rollback(victim, now=now)
                    del entries[victim]
                else:
                    store.commit(victim, now=now)
                    committed.add(victim)
    finally:
        store.close()
