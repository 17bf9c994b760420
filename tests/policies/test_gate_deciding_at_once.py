"""Which decisions the server makes on its event loop (`Gate.try_decide`): those that wait on
nothing. Any other gives None, having reserved and recorded nothing, and the server decides it
in a thread (`Gate.decide`), as before."""

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
    Denied,
    Gate,
    SqliteCounterStore,
    ToolCall,
    WouldWait,
    load_policy,
    load_policy_text,
)
from policies._audit import records
from policies._gate import ARGS_DECIDED_AT_ONCE
from policies._sqlite import CHECKPOINT_EVERY
from sandboxes import Program, WorkspacePaths

from .conftest import GateFactory

COUNTED = "tools: {run_code: {limits: [{counter: runs, window: hour, max: 3}]}}"


def _call(tmp_path: Path, code: str = "print(1)", **more: object) -> ToolCall:
    return ToolCall(
        "run_code",
        {"code": code, **more},
        program=Program("code", code),
        workspace=WorkspacePaths(tmp_path / "files", tmp_path / "site"),
    )


def _decisions(audit: AuditLog) -> list[str]:
    return [str(r.decision) for r in records(audit) if r.event == "decision"]


def test_a_counted_call_is_decided_at_once_and_counts_as_a_decided_one(
    make_gate: GateFactory, audit: AuditLog, tmp_path: Path
) -> None:
    gate = make_gate(COUNTED)
    at_once = gate.try_decide(_call(tmp_path))
    assert isinstance(at_once, Allowed) and at_once.reservation is not None
    assert isinstance(gate.decide(_call(tmp_path)), Allowed)
    assert isinstance(gate.try_decide(_call(tmp_path)), Allowed)
    assert _decisions(audit) == ["allow", "allow", "allow"]
    # The fourth is over the limit: deciding it reads the counters' usage, in a thread.
    assert gate.try_decide(_call(tmp_path)) is None
    assert _decisions(audit) == ["allow", "allow", "allow"]  # nothing recorded
    refused = gate.decide(_call(tmp_path))
    assert isinstance(refused, Denied) and refused.rule.startswith("/tools/run_code/limits")


def test_a_refusal_the_policy_makes_without_the_store_is_decided_at_once(
    make_gate: GateFactory, audit: AuditLog, tmp_path: Path
) -> None:
    gate = make_gate("tools: {run_code: {action: deny, reason: not today}}")
    refused = gate.try_decide(_call(tmp_path))
    assert isinstance(refused, Denied) and "not today" in refused.reason
    assert _decisions(audit) == ["deny"]


@pytest.mark.parametrize(
    "policy",
    [
        "tools: {run_code: {action: require_approval, reason: reviewed}}",
        "quotas: {network: {allow: ['api.test:443']}}\n" + COUNTED,
    ],
    ids=["approval", "egress"],
)
def test_calls_that_read_approvals_or_egress_terms_are_decided_in_a_thread(
    make_gate: GateFactory, audit: AuditLog, tmp_path: Path, policy: str
) -> None:
    gate = make_gate(policy)
    assert gate.try_decide(_call(tmp_path)) is None
    assert _decisions(audit) == []
    assert gate.decide(_call(tmp_path)) is not None


def test_large_or_nested_arguments_are_decided_in_a_thread(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate("tools: {run_code: {}}")
    assert gate.try_decide(_call(tmp_path, "x" * ARGS_DECIDED_AT_ONCE)) is not None
    assert gate.try_decide(_call(tmp_path, "x" * (ARGS_DECIDED_AT_ONCE + 1))) is None
    assert gate.try_decide(_call(tmp_path, env={"A": "1"})) is None


def test_while_another_process_holds_the_state_file_nothing_is_reserved_and_nothing_waits(
    make_gate: GateFactory, sqlite_store: SqliteCounterStore, audit: AuditLog, tmp_path: Path
) -> None:
    gate = make_gate(COUNTED)
    holder = sqlite3.connect(sqlite_store.path, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write lock
    try:
        began = time.monotonic()
        assert gate.try_decide(_call(tmp_path)) is None
        assert time.monotonic() - began < 0.5
    finally:
        holder.close()
    assert _decisions(audit) == []
    for _ in range(3):  # the refused attempt reserved nothing: three calls still fit
        assert isinstance(gate.try_decide(_call(tmp_path)), Allowed)


def test_while_another_thread_is_inside_the_store_nothing_waits(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteCounterStore(path, busy_timeout_s=3.0)
    runs = CounterSpec("runs|grant=alice", window_s=3600.0, max=10)
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    waiting = threading.Thread(target=lambda: store.reserve([runs], 1_700_000_000.0))
    try:
        waiting.start()  # it waits for the database, holding the store's own lock
        time.sleep(0.3)
        began = time.monotonic()
        with pytest.raises(WouldWait):
            store.reserve_now([runs], 1_700_000_000.0)
        assert time.monotonic() - began < 0.5
    finally:
        holder.close()
        waiting.join()
        store.close()


def test_the_state_files_upkeep_is_left_to_a_reservation_that_may_wait(tmp_path: Path) -> None:
    """The write-ahead log is checkpointed every `CHECKPOINT_EVERY` writes, never by
    `reserve_now`: it declines the write that is due, and the next `reserve` checkpoints."""
    path = tmp_path / "state.sqlite3"
    store = SqliteCounterStore(path)
    runs = CounterSpec("runs|grant=alice", window_s=3600.0, max=100_000)
    declined = 0
    try:
        for i in range(3 * CHECKPOINT_EVERY):
            now = 1_700_000_000.0 + i
            try:
                assert store.reserve_now([runs], now) is not None
            except WouldWait:
                declined += 1
                assert store.reserve([runs], now) is not None
        wal = Path(f"{path}-wal")
        assert 2 <= declined <= 4  # every CHECKPOINT_EVERY writes, and a pruning
        assert wal.stat().st_size < 2 * 1024 * 1024, "the log grew past its checkpoints"
    finally:
        store.close()


@pytest.mark.redis
def test_redis_state_or_a_redis_audit_stream_is_decided_in_a_thread(
    redis_gates: Callable[[str], list[Gate]], audit: AuditLog, tmp_path: Path
) -> None:
    assert all(gate.try_decide(_call(tmp_path)) is None for gate in redis_gates(COUNTED))
    assert _decisions(audit) == []


def test_an_fsynced_audit_file_is_decided_in_a_thread(
    sqlite_store: SqliteCounterStore, fsynced_audit: AuditLog, tmp_path: Path
) -> None:
    gate = Gate(load_policy_text(COUNTED), sqlite_store, fsynced_audit)
    assert gate.try_decide(_call(tmp_path)) is None


def test_a_changed_policy_file_is_reloaded_in_a_thread(
    sqlite_store: SqliteCounterStore, audit: AuditLog, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("tools: {run_code: {}}\n")
    gate = Gate(load_policy(policy), sqlite_store, audit, policy_path=policy)
    assert isinstance(gate.try_decide(_call(tmp_path)), Allowed)
    policy.write_text("tools: {run_code: {action: deny, reason: closed for the day}}\n")
    assert gate.try_decide(_call(tmp_path)) is None  # loading it is file work
    refused = gate.decide(_call(tmp_path))  # the thread reloads it
    assert isinstance(refused, Denied) and "closed for the day" in refused.reason
    assert isinstance(gate.try_decide(_call(tmp_path)), Denied)
