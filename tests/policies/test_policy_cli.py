"""`sandgate policy|audit|approve|deny` through `main(argv) -> int`, as a user would run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies import (
    AuditLog,
    Gate,
    NeedsApproval,
    SqliteCounterStore,
    ToolCall,
    default_policy_path,
    load_policy_text,
    read_audit,
)
from runner.cli._policy import approve_main, audit_main, policy_main

BROKEN = "version: '1'\ntools:\n  run_code:\n    limits:\n      - {counter: c, windw: minute}\n"


def test_check_valid_and_invalid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    assert policy_main(["check", str(default_policy_path())]) == 0
    assert "ok" in capsys.readouterr().out
    assert policy_main(["check", str(default_policy_path()), str(broken)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{broken}:5:22: tools.run_code.limits[0].windw: " in "\n".join(lines)
    assert any(line.startswith(f"{broken}:5:9: tools.run_code.limits[0].window") for line in lines)


def test_check_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("tools:\n  mystery_tool: {}\n")
    assert policy_main(["check", str(path)]) == 0
    assert f"{path}:2:3: warning: tools.mystery_tool:" in capsys.readouterr().out


def test_explain_uses_throwaway_counters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "tools: {run_code: {limits: [{counter: runs, window: minute, max: 1}], "
        "quotas: {timeout_s: 9}}}\n"
    )
    argv = [
        "explain",
        str(path),
        "--tool",
        "run_code",
        "--args",
        '{"code": "print(1)"}',
        "--timeout-s",
        "60",
    ]
    for _ in range(3):  # never consumes anything: every run says allow
        assert policy_main(argv) == 0
        out = capsys.readouterr().out
        assert "decision: allow" in out and "/tools/run_code" in out
        assert "wall_timeout_s=9.0" in out
    assert not (tmp_path / "state.sqlite3").exists()


def test_explain_names_the_deciding_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = default_policy_path().parent / "policylayer-seed.json"
    assert (
        policy_main(["explain", str(seed), "--tool", "run_python_code", "--args", '{"code": "1"}'])
        == 0
    )
    out = capsys.readouterr().out
    assert "decision: deny" in out and "rule:     /default" in out
    assert policy_main(["explain", str(seed), "--tool", "x", "--args", "[1]"]) == 2


def test_schema_is_the_json_schema_of_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    assert {"version", "default", "mode", "hide", "tools", "grants", "engines", "limits"} <= set(
        schema["properties"]
    )


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_main([]) == 2
    assert policy_main(["explain"]) == 2
    assert audit_main(["bogus"]) == 2
    assert approve_main([]) == 2
    capsys.readouterr()


def _gate(tmp_path: Path, text: str) -> tuple[Gate, SqliteCounterStore, AuditLog]:
    store = SqliteCounterStore(tmp_path / "state.sqlite3")
    audit = AuditLog(tmp_path / "audit.jsonl")
    return Gate(load_policy_text(text), store, audit), store, audit


def test_audit_tail_and_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate, store, audit = _gate(tmp_path, "tools: {run_code: {}}")
    try:
        gate.decide(ToolCall("run_code", {"code": "1"}, grant="alice"))
        gate.decide(ToolCall("shell", {}, grant="bob"))
        gate.decide(ToolCall("run_code", {"code": "2"}, grant="bob"))
    finally:
        store.close()
        audit.close()
    path = str(tmp_path / "audit.jsonl")
    assert audit_main(["tail", "-n", "2", "--path", path]) == 0
    tail = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["tool"], r["grant"]) for r in tail] == [("shell", "bob"), ("run_code", "bob")]
    assert audit_main(["query", "--decision", "deny", "--path", path]) == 0
    (denied,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (denied["tool"], denied["rule"]) == ("shell", "/default")
    assert (
        audit_main(
            [
                "query",
                "--grant",
                "bob",
                "--tool",
                "run_code",
                "--since",
                "2000-01-01T00:00:00Z",
                "--path",
                path,
            ]
        )
        == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert audit_main(["query", "--since", "2999-01-01", "--path", path]) == 0
    assert capsys.readouterr().out == ""
    assert audit_main(["tail", "--path", str(tmp_path / "none.jsonl")]) == 1


def test_approve_and_deny_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate, store, audit = _gate(tmp_path, "tools: {pip_install_package: {action: require_approval}}")
    try:
        first = gate.decide(ToolCall("pip_install_package", {"package_name": "a"}))
        second = gate.decide(ToolCall("pip_install_package", {"package_name": "b"}))
        assert isinstance(first, NeedsApproval) and isinstance(second, NeedsApproval)
        state = ["--state-dir", str(tmp_path)]
        assert approve_main([first.approval_id, *state, "--by", "ops"]) == 0
        assert approve_main([second.approval_id, *state], deny=True) == 0
        assert approve_main([second.approval_id, *state]) == 1  # already answered
        assert approve_main(["nope", *state]) == 1
        assert approve_main(["nope", "--state-dir", str(tmp_path / "empty")]) == 1
        assert gate.approval_status(first.approval_id) == "approved"
        assert gate.approval_status(second.approval_id) == "denied"
    finally:
        store.close()
        audit.close()
    out, err = capsys.readouterr()
    assert f"approved {first.approval_id}" in out and f"denied {second.approval_id}" in out
    assert "already denied" in err
    answers = [
        (r.approval_id, r.decision, r.by)
        for r in read_audit(tmp_path / "audit.jsonl")
        if r.event == "approval"
    ]
    assert answers[0] == (first.approval_id, "allow", "operator:ops")
    assert answers[1][:2] == (second.approval_id, "deny")
    assert answers[1][2] is not None and answers[1][2].startswith("operator:")


def test_default_state_dir_comes_from_sandgate_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policies import state_dir_default

    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path / "home"))
    assert state_dir_default() == tmp_path / "home"
    monkeypatch.delenv("SANDGATE_HOME")
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir_default() == tmp_path / ".local" / "state" / "sandgate"


def test_explain_in_audit_mode_says_what_enforce_would_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("mode: audit\ndefault: allow\ntools: {run_code: {action: deny}}\n")
    assert policy_main(["explain", str(path), "--tool", "run_code"]) == 0
    assert "decision: allow (audit mode: enforce would deny)" in capsys.readouterr().out
    assert policy_main(["explain", str(path), "--tool", "other"]) == 0
    assert "decision: allow\n" in capsys.readouterr().out
