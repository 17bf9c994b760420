"""The console's pure rules: who is an operator, which transports it answers on, how long a
login lasts, the `server.console` policy section, the usage window, the approval room and the
charts."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, cast

import pytest
from starlette.requests import Request

from policies import ConsoleSettings, NeedsApproval, PolicyLoadError, ToolCall, load_policy_text
from runner.console import PLAIN_HTTP_REFUSED, Console, Logins, operator_of, transport_allowed
from runner.console._charts import line_chart
from runner.operator import ApprovalRoom, OperatorApi, UsageWindow
from tests.clock import FakeClock


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _settings(**more: Any) -> ConsoleSettings:
    return ConsoleSettings.model_validate(
        {"operators": [{"name": "ops", "token_sha256": _digest("op-token")}], **more}
    )


def test_only_a_listed_operators_token_names_an_operator() -> None:
    settings = _settings()
    assert operator_of(settings, "op-token") == "ops"
    assert operator_of(settings, "op-token ") is None
    assert operator_of(settings, "") is None


@pytest.mark.parametrize(
    ("scheme", "client", "allow", "expected"),
    [
        ("https", "203.0.113.9", False, "ok"),
        ("http", "127.0.0.1", False, "ok"),
        ("http", "::1", False, "ok"),
        ("http", "203.0.113.9", False, "plain_http"),
        ("http", "10.0.0.7", False, "plain_http"),
        ("http", None, False, "plain_http"),
        ("http", "203.0.113.9", True, "ok"),
    ],
)
def test_plain_http_is_refused_off_loopback_unless_allowed(
    scheme: str, client: str | None, allow: bool, expected: str
) -> None:
    settings = _settings(allow_plain_http=allow)
    assert transport_allowed(settings, scheme=scheme, client_host=client) == expected


def _request(client: str, scheme: str = "http") -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": scheme,
            "path": "/console/approvals",
            "raw_path": b"/console/approvals",
            "query_string": b"",
            "headers": [(b"host", b"console.example:8000")],
            "client": (client, 50000),
            "server": ("0.0.0.0", 8000),
        }
    )


def test_the_console_answers_plain_http_off_loopback_with_what_to_do() -> None:
    settings = _settings()
    console = Console(cast(OperatorApi, None), lambda: settings, lambda _token: None)
    _, refused = console._gatekeep(_request("203.0.113.9"))
    assert refused is not None and refused.status_code == 403
    assert bytes(refused.body).decode() == PLAIN_HTTP_REFUSED.format(client="203.0.113.9")
    assert b"allow_plain_http" in bytes(refused.body)
    assert console._gatekeep(_request("127.0.0.1"))[1] is None
    assert console._gatekeep(_request("203.0.113.9", scheme="https"))[1] is None


def test_without_a_console_section_the_console_is_off() -> None:
    console = Console(cast(OperatorApi, None), lambda: None, lambda _token: None)
    _, refused = console._gatekeep(_request("127.0.0.1"))
    assert refused is not None and refused.status_code == 404
    assert b"server.console.operators" in bytes(refused.body)


def test_a_login_ends_when_it_expires_or_its_operator_leaves_the_policy() -> None:
    clock = FakeClock(1000.0)
    logins = Logins(clock)
    cookie, login = logins.open("ops", 60.0)
    assert logins.get(cookie, {"ops"}) == login
    assert logins.get("forged", {"ops"}) is None
    assert logins.get(cookie, {"someone-else"}) is None  # removed by a policy reload
    assert logins.get(cookie, {"ops"}) is None  # and gone for good
    again, _ = logins.open("ops", 60.0)
    clock.advance(61.0)
    assert logins.get(again, {"ops"}) is None


def test_the_console_section_is_checked() -> None:
    base = "version: '1'\nserver:\n  console:\n"
    policy = load_policy_text(
        base + f"    operators: [{{name: ops, token_sha256: '{_digest('t')}'}}]\n"
    )
    console = policy.server.console
    assert console is not None
    assert (console.allow_plain_http, console.hold_approvals_s) == (False, 60.0)
    assert load_policy_text("version: '1'\n").server.console is None
    same = f"{{name: ops, token_sha256: '{_digest('t')}'}}"
    for body in ("    operators: []\n", f"    operators: [{same}, {same}]\n"):
        with pytest.raises(PolicyLoadError) as caught:
            load_policy_text(base + body)
        assert "operators" in str(caught.value)


def test_an_operator_may_not_have_a_grants_token() -> None:
    policy = (
        "version: '1'\n"
        f"grants:\n  alice: {{token_sha256: '{_digest('shared')}'}}\n"
        "server:\n  console:\n"
        f"    operators: [{{name: ops, token_sha256: '{_digest('shared').upper()}'}}]\n"
    )
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_text(policy)
    assert "server.console.operators[0].token_sha256" in str(caught.value)
    assert "has the token of grant 'alice'" in str(caught.value)


def test_the_usage_window_counts_per_minute_and_keeps_one_hour() -> None:
    clock = FakeClock(3600.0 * 10)
    usage = UsageWindow(clock)
    usage.record(grant="alice", engine="wasm", decision="allow", busy=False, seconds=0.2)
    usage.record(grant="alice", engine="none", decision="deny", busy=False, seconds=0.01)
    clock.advance(60.0)
    usage.record(grant="bob", engine="wasm", decision="allow", busy=True, seconds=0.4)
    [alice, bob] = usage.by_grant()
    assert (alice.name, len(alice.buckets)) == ("alice", 60)
    assert (alice.buckets[-2].calls, alice.buckets[-2].denials, alice.buckets[-1].calls) == (
        2,
        1,
        0,
    )
    assert (bob.total("busy"), bob.buckets[-1].latency_mean_s) == (1.0, 0.4)
    assert [s.name for s in usage.by_engine()] == ["none", "wasm"]
    clock.advance(3600.0)
    usage.record(grant="carol", engine="wasm", decision="allow", busy=False, seconds=0.1)
    assert [s.name for s in usage.by_grant()] == ["carol"]


def _need(approval_id: str, expires_at: float) -> NeedsApproval:
    return NeedsApproval(
        "d1", approval_id, "/tools/run_code/action", "asks", expires_at, "operator"
    )


@pytest.mark.anyio
async def test_a_held_call_wakes_when_its_approval_is_answered_here() -> None:
    room = ApprovalRoom()
    room.asked(_need("a1", 1e12), ToolCall(tool="run_code", args={"code": "1"}))
    [pending] = room.listing()
    assert (pending.approval_id, pending.held) == ("a1", 0)

    async def never() -> bool:
        return False

    waiting = asyncio.create_task(room.wait("a1", 30.0, never))
    await asyncio.sleep(0)  # one turn: the task runs up to its first wait
    assert room.listing()[0].held == 1  # the call is held before it is answered
    room.answered("a1", "fine by me")
    assert await asyncio.wait_for(waiting, 5.0) is True
    assert room.note("a1") == "fine by me"
    assert room.listing() == []


@pytest.mark.anyio
async def test_a_held_call_sees_an_answer_given_elsewhere_and_gives_up_at_its_deadline() -> None:
    room = ApprovalRoom()
    room.asked(_need("a2", 1e12), ToolCall(tool="run_code", args={}))

    async def answered() -> bool:
        return True

    async def pending() -> bool:
        return False

    assert await room.wait("a2", 5.0, answered) is True
    assert await room.wait("a2", 0.05, pending) is False
    assert await room.wait("unknown", 5.0, answered) is False


def test_a_chart_draws_one_escaped_line_per_series() -> None:
    svg = str(
        line_chart(
            "Calls",
            unit="",
            start=0.0,
            step_s=60,
            lines=[("alice", [0, 1, 3]), ("<b>x</b>", [0, 0, 0])],
        )
    )
    assert svg.count("<polyline") == 2
    assert 'data-name="alice"' in svg and "&lt;b&gt;x&lt;/b&gt;" in svg and "<b>" not in svg
    assert svg.count("<circle") == 2  # the minutes with calls
    empty = str(line_chart("Calls", unit="", start=0.0, step_s=60, lines=[]))
    assert "no calls in the last hour" in empty
