"""Approvals over real streamable HTTP: bound to the grant and the exact call, answered only by
whom the policy names (`approvals.by`), and audited with who answered.

Another grant's answer is refused and changes nothing; a client that did not declare the
elicitation capability never answers, whatever the policy; with `by: client` the human at a
capable client answers by MCP elicitation; with `by: operator` only `sandgate approve` does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2 as httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from runner import main
from tests.results import text_of
from tests.tenancy._server import (
    CALL_TIMEOUT_S,
    TenantServer,
    engine_params,
    tenant_policy,
    tenant_server,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

STATE_PREFIX = "sandgate-approval:"  # what the server puts in `requestState`
INPUT_KEY = "sandgate_approval"  # the input response that carries the human's answer
APPROVE = {INPUT_KEY: {"action": "accept", "content": {"approve": True}}}
TOOLS = "  run_code: {action: require_approval, reason: every run is reviewed}\n"


@pytest.fixture(scope="module", params=engine_params())
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _server(tmp: pytest.TempPathFactory, engine: str, by: str) -> Iterator[TenantServer]:
    policy = tenant_policy(engine, tools=TOOLS, sections=f"approvals: {{by: {by}}}\n")
    with tenant_server(tmp.mktemp(f"approvals-{by}"), engine, policy=policy) as running:
        yield running


@pytest.fixture(scope="module")
def by_client(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[TenantServer]:
    yield from _server(tmp_path_factory, engine, "client")


@pytest.fixture(scope="module")
def by_operator(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[TenantServer]:
    yield from _server(tmp_path_factory, engine, "operator")


@asynccontextmanager
async def capable_client(
    server: TenantServer, grant: str, *, approve: bool, asked: list[str], mode: Any = "auto"
) -> AsyncIterator[Client]:
    """An SDK client of `grant` that declares elicitation; its human answers `approve`."""

    async def human(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": approve})

    async with (
        httpx.AsyncClient(headers=server.headers(grant), timeout=CALL_TIMEOUT_S) as http,
        Client(
            streamable_http_client(server.url, http_client=http),
            mode=mode,
            elicitation_callback=human,
        ) as client,
    ):
        yield client


def asked_ids(server: TenantServer, grant: str, code: str) -> list[str]:
    """The approval id of each `needs_approval` decision of `grant`, in order (the audit keeps
    argument hashes, not arguments; `code` picks the test's own call)."""
    digest = hashlib.sha256(
        json.dumps({"code": code}, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return [
        r["approval_id"]
        for r in server.audit()
        if r.get("decision") == "needs_approval"
        and r["grant"] == grant
        and r["args_sha256"] == digest
    ]


def answers(server: TenantServer, approval_id: str) -> list[tuple[str, str]]:
    """(allow/deny, who answered) of every answer to `approval_id` in the audit trail."""
    return [
        (r["decision"], r["by"])
        for r in server.audit()
        if r["event"] == "approval" and r["approval_id"] == approval_id
    ]


def refusals(server: TenantServer, approval_id: str) -> list[tuple[str, str, str]]:
    """(grant, rule, who answered) of every refused answer naming `approval_id`."""
    return [
        (r["grant"], r["rule"], r["by"])
        for r in server.audit()
        if r["event"] == "decision"
        and r["decision"] == "deny"
        and r.get("approval_id") == approval_id
        and r["rule"].startswith("/approvals")
    ]


def structured(message: dict[str, Any] | None) -> dict[str, Any]:
    """The structured content of a raw `run_code` answer."""
    assert message is not None and "result" in message, message
    content = message["result"]["structuredContent"]
    assert isinstance(content, dict)
    return content


async def test_another_grants_answer_is_refused_and_the_call_stays_pending(
    by_client: TenantServer,
) -> None:
    server, code = by_client, "print('alice asked first')"
    async with server.raw("alice") as alice:
        _, first = await alice.call_tool("run_code", {"code": code})
        assert structured(first)["rule"] == "/tools/run_code/action"
        [approval] = asked_ids(server, "alice", code)

        bob_asked: list[str] = []
        async with capable_client(server, "bob", approve=True, asked=bob_asked) as bob:
            for answer in (True, False):
                sent = types.ElicitResult(action="accept", content={"approve": answer})
                refused = await bob.call_tool(
                    "run_code",
                    {"code": code},
                    input_responses={INPUT_KEY: sent},
                    request_state=STATE_PREFIX + approval,
                )
                assert refused.is_error and refused.structured_content is not None
                assert refused.structured_content["rule"] == "/approvals"
                assert "alice" not in text_of(refused)  # as for an id that never existed
        assert bob_asked == []
        assert answers(server, approval) == []
        assert refusals(server, approval) == [("bob", "/approvals", "client:bob")] * 2

        _, again = await alice.call_tool("run_code", {"code": code})
        assert structured(again)["rule"] == "/tools/run_code/action"  # not run, still asked
        assert asked_ids(server, "alice", code) == [approval, approval]  # the same, pending


@pytest.mark.parametrize("by", ["client", "operator"])
async def test_input_responses_without_the_elicitation_capability_are_refused(
    request: pytest.FixtureRequest, engine: str, by: str
) -> None:
    server: TenantServer = request.getfixturevalue(f"by_{by}")
    assert server.engine == engine
    code = f"print('no capability, by {by}')"
    async with server.raw("alice") as alice:  # initialized with no capabilities
        _, first = await alice.call_tool("run_code", {"code": code})
        assert structured(first)["rule"] == "/tools/run_code/action"
        [approval] = asked_ids(server, "alice", code)
        _, refused = await alice.request(
            "tools/call",
            {
                "name": "run_code",
                "arguments": {"code": code},
                "inputResponses": APPROVE,
                "requestState": STATE_PREFIX + approval,
            },
        )
        assert structured(refused)["status"] == "denied"
        assert structured(refused)["rule"] == "/approvals/by"
        assert answers(server, approval) == []
        assert refusals(server, approval) == [("alice", "/approvals/by", "client:alice")]
        _, again = await alice.call_tool("run_code", {"code": code})
        assert structured(again)["rule"] == "/tools/run_code/action"
        assert asked_ids(server, "alice", code) == [approval, approval]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_by_client_the_human_at_a_capable_client_answers(
    by_client: TenantServer, mode: str
) -> None:
    server, code = by_client, f"print('approved at the client, {mode}')"
    asked: list[str] = []
    async with capable_client(server, "carol", approve=True, asked=asked, mode=mode) as carol:
        ran = await carol.call_tool("run_code", {"code": code})
    assert not ran.is_error and ran.structured_content is not None
    assert ran.structured_content["stdout"] == f"approved at the client, {mode}\n"
    assert len(asked) == 1 and "every run is reviewed" in asked[0]
    [approval] = asked_ids(server, "carol", code)
    assert answers(server, approval) == [("allow", "client:carol")]


async def test_by_operator_sandgate_approve_lets_the_identical_call_run_once(
    by_operator: TenantServer,
) -> None:
    server, code = by_operator, "print('approved by the operator')"
    asked: list[str] = []
    async with capable_client(server, "alice", approve=True, asked=asked) as alice:
        first = await alice.call_tool("run_code", {"code": code})
        assert first.is_error and first.structured_content is not None
        assert first.structured_content["rule"] == "/tools/run_code/action"
        [approval] = asked_ids(server, "alice", code)

        state = ["--state-dir", str(server.state_dir), "--by", "ops"]
        assert main(["approve", approval, *state]) == 0  # another process than the server's
        ran = await alice.call_tool("run_code", {"code": code})
        assert not ran.is_error and ran.structured_content is not None
        assert ran.structured_content["stdout"] == "approved by the operator\n"

        once = await alice.call_tool("run_code", {"code": code})
        assert once.is_error and once.structured_content is not None
        assert once.structured_content["rule"] == "/tools/run_code/action"
    assert asked == []  # the server never asked the client
    assert answers(server, approval) == [("allow", "operator:ops")]
