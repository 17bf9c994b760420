"""Reloading: an edited policy file takes effect; a broken edit is refused, the old one stays."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from policies import (
    Allowed,
    AuditLog,
    Denied,
    Gate,
    SqliteCounterStore,
    ToolCall,
    load_policy,
)
from tests.clock import FakeClock

ALLOW = "tools: {run_code: {limits: [{counter: runs, window: hour, max: 3}]}}\n"
DENY = "tools: {run_code: {action: deny, reason: closed for today}}\n"
CALL = ToolCall("run_code", {"code": "1"})


def write(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a visible edit


@pytest.fixture
def gate(
    tmp_path: Path, sqlite_store: SqliteCounterStore, audit: AuditLog, clock: FakeClock
) -> Gate:
    path = tmp_path / "policy.yaml"
    write(path, ALLOW)
    return Gate(load_policy(path), sqlite_store, audit, clock=clock, policy_path=path)


def test_an_edit_takes_effect_on_the_next_call(gate: Gate, tmp_path: Path) -> None:
    assert isinstance(gate.decide(CALL), Allowed)
    write(tmp_path / "policy.yaml", DENY)
    denied = gate.decide(CALL)
    assert isinstance(denied, Denied)
    assert (denied.rule, denied.reason) == ("/tools/run_code/action", "closed for today")
    assert gate.policy.tools["run_code"].action == "deny"


def test_a_broken_edit_is_refused_and_logged(
    gate: Gate, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = gate.policy
    write(tmp_path / "policy.yaml", "tools: {run_code: {acton: deny}}\n")
    with caplog.at_level(logging.ERROR, logger="sandgate.policy"):
        assert gate.reload_if_changed() is False
        assert isinstance(gate.decide(CALL), Allowed)
    assert gate.policy is before
    assert any("acton" in r.getMessage() for r in caplog.records)
    write(tmp_path / "policy.yaml", DENY)  # fixed: now it loads
    assert gate.reload_if_changed() is True
    assert isinstance(gate.decide(CALL), Denied)


def test_a_deleted_file_keeps_the_old_policy(gate: Gate, tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").unlink()
    assert gate.reload_if_changed() is False
    assert isinstance(gate.decide(CALL), Allowed)


def test_counters_survive_reloads(gate: Gate, tmp_path: Path) -> None:
    for _ in range(3):
        assert isinstance(gate.decide(CALL), Allowed)
    write(tmp_path / "policy.yaml", ALLOW.replace("max: 3", "max: 4") + "# edited\n")
    assert isinstance(gate.decide(CALL), Allowed)  # the 4th of 4
    denied = gate.decide(CALL)
    assert isinstance(denied, Denied) and denied.rule == "/tools/run_code/limits/runs"


def test_no_change_no_reload(gate: Gate) -> None:
    assert gate.reload_if_changed() is False
    assert gate.reload_if_changed() is False
