"""A server auditing into a Redis stream (`audit.sink: redis`, a real redis-server; the engine
is a fake): its calls are what `sandgate audit query/tail` and the console's audit API read;
with Redis stopped a call is refused under `/audit` and consumes no counter."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import Caller, Config, main, open_service
from runner._errors import SetupError
from runner.operator import AuditQuery
from sandboxes import FakeEngine
from tests.redis_server import RedisServer, redis_server
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

RUNS = "limits: [{counter: runs, window: hour, max: 2, scope: grant}]"


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


def _policy(tmp_path: Path, audit: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"version: '1'\ndefault: deny\ntools:\n  run_code: {{{RUNS}}}\naudit: {audit}\n"
    )
    return path


def _config(tmp_path: Path, policy: Path) -> Config:
    return Config(policy_path=policy, state_dir=tmp_path / "state", tool_sets=("native",))


def _audit(*argv: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["audit", *argv]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_calls_are_in_the_stream_that_sandgate_audit_reads(
    tmp_path: Path, server: RedisServer
) -> None:
    policy = _policy(tmp_path, f"{{sink: redis, url: '{server.url}', stream: calls}}")
    async with open_service(_config(tmp_path, policy), engines={"wasm": FakeEngine()}) as service:
        assert not (await service.call_tool("run_code", {"code": "1"}, Caller())).is_error
        seen = await service.operator.audit(AuditQuery(event="decision"))
        exported = await service.operator.audit_lines(AuditQuery())
    assert not (tmp_path / "state" / "audit.jsonl").exists()  # nothing went to a file
    assert [(r.decision, r.tool) for r in seen] == [("allow", "run_code")]
    printed = _audit("query", "--policy", str(policy))
    assert [r["event"] for r in printed] == ["decision", "outcome"]
    assert [json.loads(line) for line in exported] == printed
    assert _audit("tail", "-n", "1", "--policy", str(policy)) == printed[1:]


async def test_with_redis_stopped_a_call_is_refused_and_consumes_no_counter(
    tmp_path: Path, server: RedisServer
) -> None:
    policy = _policy(tmp_path, f"{{sink: redis, url: '{server.url}'}}")
    engine = FakeEngine()
    async with open_service(_config(tmp_path, policy), engines={"wasm": engine}) as service:
        assert not (await service.call_tool("run_code", {"code": "1"}, Caller())).is_error
        server.stop()
        refused = await service.call_tool("run_code", {"code": "2"}, Caller())
        assert refused.is_error and "rule /audit" in text_of(refused)
        assert "The audit log cannot be written (Redis: " in text_of(refused)
        server.start()  # the same AOF: the records acknowledged before are still there
        assert not (await service.call_tool("run_code", {"code": "3"}, Caller())).is_error
        over = await service.call_tool("run_code", {"code": "4"}, Caller())
        assert over.is_error and "/tools/run_code/limits/runs" in text_of(over)
    assert len(engine.plans) == 2  # the refused call never ran
    printed = _audit("query", "--event", "decision", "--policy", str(policy))
    assert [(r["decision"], r["rule"]) for r in printed] == [
        ("allow", "/tools/run_code"),
        ("allow", "/tools/run_code"),
        ("deny", "/tools/run_code/limits/runs"),
    ]


async def test_a_server_cannot_start_on_an_unreachable_redis_sink(tmp_path: Path) -> None:
    policy = _policy(tmp_path, f"{{sink: redis, url: 'unix://{tmp_path}/none.sock'}}")
    with pytest.raises(SetupError) as raised:
        async with open_service(_config(tmp_path, policy), engines={"wasm": FakeEngine()}):
            pass
    assert "audit" in str(raised.value) and "none.sock" in str(raised.value)
