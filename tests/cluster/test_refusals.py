"""`sandgate serve --ray` refuses to start, saying what to do, without Redis state or a cluster."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runner.cli import main
from tests.processes import free_port

REDIS_STATE = "state:\n  backend: redis\n  url: redis://127.0.0.1:1/0\n"
SHARED_SESSIONS = "server:\n  http_sessions: redis\n"


def refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy_text: str, *, ray: str
) -> str:
    """What `sandgate serve --ray RAY` with the policy says as it refuses to start (exit 2)."""
    policy = tmp_path / "p.yaml"
    policy.write_text("version: '1'\ndefault: deny\n" + policy_text)
    argv = ["serve", "--ray", ray, "--transport", "streamable-http"]
    assert main([*argv, "--policy", str(policy), "--state-dir", str(tmp_path)]) == 2
    return capsys.readouterr().err


def test_a_policy_without_redis_state_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said = refused(tmp_path, capsys, "", ray="127.0.0.2:1")
    assert "state.backend 'sqlite'" in said
    assert "backend: redis" in said and "sink: redis" in said


def test_http_sessions_kept_in_memory_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "http_sessions: redis" in refused(tmp_path, capsys, REDIS_STATE, ray="127.0.0.2:1")


def test_no_cluster_at_the_address_is_said_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    said = refused(tmp_path, capsys, REDIS_STATE + SHARED_SESSIONS, ray=address)
    assert f"--ray {address}: nothing listens there" in said
    assert "ray start --head" in said


def test_a_console_in_the_policy_is_said_not_to_be_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = hashlib.sha256(b"operator-token").hexdigest()
    console = f"  console:\n    operators: [{{name: ops, token_sha256: '{operator}'}}]\n"
    said = refused(
        tmp_path, capsys, REDIS_STATE + SHARED_SESSIONS + console, ray=f"127.0.0.1:{free_port()}"
    )
    assert "sets server.console, but the operator console is not served with --ray" in said
