"""Which settlings of an allowed call may wait on I/O (`Gate.finish_waits`): the server runs
those off its event loop, the others in place. A SQLite commit waits on nothing, not even
while another process holds the database and another thread waits for it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from policies import (
    Allowed,
    AuditLog,
    CounterSpec,
    Gate,
    Outcome,
    SqliteCounterStore,
    StateUnavailable,
    ToolCall,
    load_policy_text,
)
from sandboxes import Program, WorkspacePaths

from .conftest import GateFactory

COUNTED = "tools: {run_code: {limits: [{counter: runs, window: hour, max: 10}]}}"
UNCOUNTED = "tools: {run_code: {}}"
OUTCOMES: tuple[Outcome, ...] = ("completed", "cancelled", "refused", "infra_error")


def _allowed(gate: Gate, tmp_path: Path) -> Allowed:
    call = ToolCall(
        "run_code",
        {"code": "print(1)"},
        program=Program("code", "print(1)"),
        workspace=WorkspacePaths(tmp_path / "files", tmp_path / "site"),
    )
    decision = gate.decide(call)
    assert isinstance(decision, Allowed), decision
    return decision


def _every_outcome_waits(gate: Gate, tmp_path: Path) -> bool:
    allowed = _allowed(gate, tmp_path)
    return all(gate.finish_waits(allowed, outcome=o) for o in OUTCOMES)


@pytest.mark.parametrize(
    ("outcome", "waits"),
    [("completed", False), ("cancelled", False), ("refused", True), ("infra_error", True)],
)
def test_on_sqlite_and_the_audit_file_only_a_rollback_waits(
    make_gate: GateFactory, tmp_path: Path, outcome: Outcome, waits: bool
) -> None:
    allowed = _allowed(make_gate(COUNTED), tmp_path)
    assert allowed.reservation is not None
    assert make_gate(COUNTED).finish_waits(allowed, outcome=outcome) is waits


def test_a_call_that_reserved_nothing_waits_for_no_outcome(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate(UNCOUNTED)
    allowed = _allowed(gate, tmp_path)
    assert allowed.reservation is None
    assert not any(gate.finish_waits(allowed, outcome=o) for o in OUTCOMES)


def test_bytes_to_charge_to_the_egress_quotas_wait(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate("quotas: {network: {allow: ['api.test:443']}}\n" + UNCOUNTED)
    allowed = _allowed(gate, tmp_path)
    assert allowed.egress is not None
    assert not gate.finish_waits(allowed, outcome="completed")
    assert gate.finish_waits(allowed, outcome="completed", egress_bytes=512)


def test_an_fsynced_audit_file_makes_every_outcome_wait(
    sqlite_store: SqliteCounterStore, fsynced_audit: AuditLog, tmp_path: Path
) -> None:
    gate = Gate(load_policy_text(UNCOUNTED), sqlite_store, fsynced_audit)
    assert _every_outcome_waits(gate, tmp_path)


@pytest.mark.redis
def test_redis_state_or_a_redis_audit_stream_makes_every_outcome_wait(
    redis_gates: Callable[[str], list[Gate]], tmp_path: Path
) -> None:
    assert all(_every_outcome_waits(gate, tmp_path) for gate in redis_gates(COUNTED))


def test_a_sqlite_commit_waits_on_no_lock_while_another_process_holds_the_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteCounterStore(path, busy_timeout_s=4.0)
    runs = CounterSpec("runs|grant=alice", window_s=3600.0, max=10)
    made = store.reserve([runs], 1_700_000_000.0)
    assert made is not None
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write lock
    waited: list[BaseException | str | None] = []

    def reserve_meanwhile() -> None:  # waits for the lock, up to the store's busy timeout
        try:
            waited.append(store.reserve([runs], 1_700_000_001.0))
        except StateUnavailable as exc:
            waited.append(exc)

    waiting = threading.Thread(target=reserve_meanwhile)
    try:
        waiting.start()
        time.sleep(0.5)  # the other thread is inside the store, waiting on the database
        began = time.monotonic()
        store.commit(made, now=1_700_000_000.0)
        took = time.monotonic() - began
        assert took < 1.0, f"the commit waited {took:.2f} s on the database's lock"
        assert waiting.is_alive() and not waited, "the other reservation should still wait"
    finally:
        holder.close()
        waiting.join()
        store.close()
    assert isinstance(waited[0], str)  # the lock was released: the waiting call reserved
    assert store.commits_locally
