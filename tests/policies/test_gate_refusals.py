"""Refusals before the policy are audited whatever the arguments were (found by tests/fuzz)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policies import AuditLog, Gate, SqliteCounterStore, ToolCall, load_policy_text, read_audit


def _gate(tmp_path: Path) -> Gate:
    store = SqliteCounterStore(tmp_path / "state.sqlite3")
    return Gate(load_policy_text("default: deny"), store, AuditLog(tmp_path / "audit.jsonl"))


def test_a_refusal_of_arguments_no_json_can_hold_is_audited_without_their_hash(
    tmp_path: Path,
) -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    denied = _gate(tmp_path).refuse(
        ToolCall(tool="run_code", args={"code": deep}, grant="g", session="s"),
        rule="/arguments/code",
        reason="nested too deeply",
    )
    (record,) = read_audit(tmp_path / "audit.jsonl")
    assert (record.id, record.rule, record.arg_keys) == (
        denied.decision_id,
        "/arguments/code",
        ("code",),
    )
    assert record.args_sha256 is None


def test_unpaired_surrogates_in_a_refused_call_are_kept_as_json_escapes(tmp_path: Path) -> None:
    _gate(tmp_path).refuse(
        ToolCall(tool="run\ud800", args={"\udcff": 1}, grant="g", session="s"),
        rule="/arguments/\udcff",
        reason="bad argument '\udcff'",
    )
    raw = (tmp_path / "audit.jsonl").read_bytes()
    raw.decode("utf-8")  # the file stays valid UTF-8
    record = json.loads(raw)
    assert (record["tool"], record["arg_keys"], record["rule"]) == (
        "run\ud800",
        ["\udcff"],
        "/arguments/\udcff",
    )
