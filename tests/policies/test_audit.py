"""The audit log: a record per decision and outcome, on disk before the call returns."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from policies import Allowed, AuditLog, AuditRecord, AuditUnavailable, ToolCall, read_audit
from sandboxes import Program, WorkspacePaths

from .conftest import GateFactory

AUDIT_FIELDS = {
    "time",
    "id",
    "event",
    "decision",
    "rule",
    "reason",
    "tool",
    "grant",
    "session",
    "arg_keys",
    "args_sha256",
    "code_sha256",
    "engine",
    "limits",
    "usage",
    "status",
    "outcome",
    "error",
}


def test_decision_and_outcome_are_readable_as_soon_as_calls_return(
    make_gate: GateFactory, tmp_path: Path
) -> None:
    gate = make_gate("tools: {run_code: {}}")
    code = "print('hi')"
    call = ToolCall(
        "run_code",
        {"timeout_s": 5, "code": code},
        grant="alice",
        session="s9",
        program=Program("code", code),
        workspace=WorkspacePaths(tmp_path, tmp_path),
    )
    decision = gate.decide(call)
    assert isinstance(decision, Allowed)
    (record,) = read_audit(tmp_path / "audit.jsonl")  # no flush or close needed
    assert (record.event, record.decision, record.id) == ("decision", "allow", decision.decision_id)
    assert (record.tool, record.grant, record.session) == ("run_code", "alice", "s9")
    assert record.arg_keys == ("code", "timeout_s")
    canonical = json.dumps({"code": code, "timeout_s": 5}, sort_keys=True, separators=(",", ":"))
    assert record.args_sha256 == hashlib.sha256(canonical.encode()).hexdigest()
    assert record.code_sha256 == hashlib.sha256(code.encode()).hexdigest()
    assert record.engine == "wasm"
    assert record.limits is not None and record.limits["wall_timeout_s"] == 30.0
    assert record.time.endswith("Z")

    gate.finish(decision, outcome="completed", status="ok", usage={"wall_ms": 12.5})
    outcome = list(read_audit(tmp_path / "audit.jsonl"))[-1]
    assert (outcome.event, outcome.id, outcome.status, outcome.outcome) == (
        "outcome",
        decision.decision_id,
        "ok",
        "completed",
    )
    assert outcome.usage == {"wall_ms": 12.5}


def test_arguments_themselves_are_never_written(make_gate: GateFactory, tmp_path: Path) -> None:
    gate = make_gate("tools: {pip_install_package: {}}")
    gate.decide(ToolCall("pip_install_package", {"package_name": "top-secret-name"}))
    assert "top-secret-name" not in (tmp_path / "audit.jsonl").read_text()


def test_every_documented_field_exists() -> None:
    assert set(AuditRecord.__dataclass_fields__) >= AUDIT_FIELDS


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append(
        AuditRecord(
            time="2025-01-01T00:00:00.000000Z",
            id="a",
            event="decision",
            decision="deny",
            rule="/default",
        )
    )
    log.close()
    with path.open("ab") as handle:
        handle.write(b'{"time": "2025-01-01T00:00:01Z", "id": "b", "eve')  # killed mid-write
    assert [r.id for r in read_audit(path)] == ["a"]


def test_concurrent_appends_stay_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)

    def writer(n: int) -> None:
        for i in range(100):
            log.append(AuditRecord(time="t", id=f"{n}-{i}", event="decision", reason="x" * 5000))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    log.close()
    assert len({r.id for r in read_audit(path)}) == 800


def test_closed_or_missing_logs_raise(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", fsync=True)
    log.close()
    with pytest.raises(AuditUnavailable):
        log.append(AuditRecord(time="t", id="x", event="decision"))
    with pytest.raises(AuditUnavailable):
        list(read_audit(tmp_path / "missing.jsonl"))
    (tmp_path / "file").write_text("")
    with pytest.raises(AuditUnavailable):
        AuditLog(tmp_path / "file" / "audit.jsonl")
