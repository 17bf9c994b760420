"""`require_approval` end to end over MCP: MCP elicitation (`approvals.by: client`), and
`sandgate approve` out of band; answers bound to the grant and the exact call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from policies import read_audit
from runner import build_server, main
from runner._service import AskHuman, Caller
from runner.serving import APPROVAL_INPUT_KEY, APPROVAL_STATE_PREFIX
from sandboxes import WasmEngine
from tests.conftest import service_for
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

POLICY = """
version: "1"
default: deny
tools:
  run_python_code:
    action: require_approval
    reason: a human reviews every run
  run_code:
    action: require_approval
    reason: a human reviews every run
"""
CALL = {"code": "print('approved run')"}
BY_CLIENT = "approvals: {by: client}\n"
APPROVE = types.ElicitResult(action="accept", content={"approve": True})


def _answering(approve: bool, asked: list[str]) -> Any:
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": approve})

    return callback


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "approval.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def client_policy(tmp_path: Path) -> Path:
    path = tmp_path / "approval-by-client.yaml"
    path.write_text(BY_CLIENT + POLICY)
    return path


def _answers(state: Path) -> list[tuple[str | None, str | None, str | None]]:
    """(approval id, allow/deny, who answered) of every answer in the audit trail."""
    return [
        (r.approval_id, r.decision, r.by)
        for r in read_audit(state / "audit.jsonl")
        if r.event == "approval"
    ]


def _asked_ids(state: Path) -> list[str | None]:
    """The approval id of every `needs_approval` decision in the audit trail."""
    return [
        r.approval_id for r in read_audit(state / "audit.jsonl") if r.decision == "needs_approval"
    ]


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # InputRequiredResult; back-channel
async def test_an_approving_human_asked_by_elicitation_lets_the_call_run(
    wasm_engine: WasmEngine, tmp_path: Path, client_policy: Path, mode: Any
) -> None:
    asked: list[str] = []
    async with (
        service_for(tmp_path / "state", wasm_engine, client_policy) as service,
        Client(
            build_server(service), mode=mode, elicitation_callback=_answering(True, asked)
        ) as client,
    ):
        result = await client.call_tool("run_python_code", CALL)
    assert isinstance(result, types.CallToolResult)
    assert not result.is_error and text_of(result).strip() == "approved run"
    assert len(asked) == 1 and "a human reviews every run" in asked[0]
    [approval] = _asked_ids(tmp_path / "state")
    assert _answers(tmp_path / "state") == [(approval, "allow", "client:local")]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_refusing_human_denies_the_call(
    wasm_engine: WasmEngine, tmp_path: Path, client_policy: Path, mode: Any
) -> None:
    asked: list[str] = []
    async with (
        service_for(tmp_path / "state", wasm_engine, client_policy) as service,
        Client(
            build_server(service), mode=mode, elicitation_callback=_answering(False, asked)
        ) as client,
    ):
        result = await client.call_tool("run_code", CALL)
    assert isinstance(result, types.CallToolResult) and result.is_error
    assert result.structured_content is not None
    assert (result.structured_content["status"], result.structured_content["rule"]) == (
        "denied",
        "/tools/run_code/action",
    )
    assert len(asked) == 1
    [(_, decision, by)] = _answers(tmp_path / "state")
    assert (decision, by) == ("deny", "client:local")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_under_by_operator_a_capable_client_is_never_asked(
    wasm_engine: WasmEngine, tmp_path: Path, policy: Path, mode: Any
) -> None:
    asked: list[str] = []
    state = tmp_path / "state"
    async with (
        service_for(state, wasm_engine, policy) as service,
        Client(
            build_server(service), mode=mode, elicitation_callback=_answering(True, asked)
        ) as client,
    ):
        first = await client.call_tool("run_code", CALL)
        assert first.is_error and first.structured_content is not None
        assert first.structured_content["rule"] == "/tools/run_code/action"
        assert asked == []
        [approval] = _asked_ids(state)
        assert approval is not None
        assert main(["approve", approval, "--state-dir", str(state), "--by", "ops"]) == 0
        second = await client.call_tool("run_code", CALL)
        assert not second.is_error and second.structured_content is not None
        assert second.structured_content["stdout"] == "approved run\n"
    assert asked == []
    assert _answers(state) == [(approval, "allow", "operator:ops")]


@pytest.mark.parametrize("by", ["client", "operator"])
async def test_input_responses_without_the_elicitation_capability_are_refused(
    wasm_engine: WasmEngine, tmp_path: Path, by: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"approvals: {{by: {by}}}\n" + POLICY)
    state = tmp_path / "state"
    async with (
        service_for(state, wasm_engine, policy) as service,
        Client(build_server(service)) as client,  # declares no elicitation
    ):
        first = await client.call_tool("run_code", CALL)
        assert first.is_error and first.structured_content is not None
        assert first.structured_content["rule"] == "/tools/run_code/action"
        [approval] = _asked_ids(state)
        assert approval is not None
        answered = await client.call_tool(
            "run_code",
            CALL,
            input_responses={APPROVAL_INPUT_KEY: APPROVE},
            request_state=APPROVAL_STATE_PREFIX + approval,
        )
        assert answered.is_error and answered.structured_content is not None
        assert (answered.structured_content["status"], answered.structured_content["rule"]) == (
            "denied",
            "/approvals/by",
        )
        assert service.gate.approval_status(approval) == "pending"
        unnamed = await client.call_tool(
            "run_code", CALL, input_responses={APPROVAL_INPUT_KEY: APPROVE}
        )
        assert unnamed.is_error and unnamed.structured_content is not None
        assert unnamed.structured_content["rule"] == "/approvals/by"
        assert service.gate.approval_status(approval) == "pending"
    assert _answers(state) == []


async def test_another_grants_answer_is_refused_and_both_calls_stay_pending(
    wasm_engine: WasmEngine, tmp_path: Path, client_policy: Path
) -> None:
    alice = Caller(grant="alice", session="a1", can_ask_input=True, elicitation=True)
    state = tmp_path / "state"
    async with service_for(state, wasm_engine, client_policy) as service:
        with pytest.raises(AskHuman) as asked:
            await service.call_tool("run_code", CALL, alice)
        approval = asked.value.need.approval_id

        for answer in (True, False):
            bob = Caller(grant="bob", session="b1", elicitation=True, answer=(approval, answer))
            refused = await service.call_tool("run_code", CALL, bob)
            assert refused.is_error and refused.structured_content is not None
            assert refused.structured_content["rule"] == "/approvals"
            assert service.gate.approval_status(approval) == "pending"

        other_code = Caller(grant="alice", session="a1", elicitation=True, answer=(approval, True))
        other = await service.call_tool("run_code", {"code": "print('other')"}, other_code)
        assert other.is_error and other.structured_content is not None
        assert other.structured_content["rule"] == "/approvals"
        other_session = Caller(
            grant="alice", session="a2", elicitation=True, answer=(approval, True)
        )
        moved = await service.call_tool("run_code", CALL, other_session)
        assert moved.is_error and moved.structured_content is not None
        assert moved.structured_content["rule"] == "/approvals"
        assert service.gate.approval_status(approval) == "pending"

        own = Caller(grant="alice", session="a1", elicitation=True, answer=(approval, True))
        ran = await service.call_tool("run_code", CALL, own)
        assert not ran.is_error and ran.structured_content is not None
        assert ran.structured_content["stdout"] == "approved run\n"
        assert service.gate.approval_status(approval) == "used"
    assert _answers(state) == [(approval, "allow", "client:alice")]
    refusals = [
        (r.grant, r.rule, r.by)
        for r in read_audit(state / "audit.jsonl")
        if r.event == "decision" and r.rule == "/approvals"
    ]
    assert (
        refusals
        == [("bob", "/approvals", "client:bob")] * 2 + [("alice", "/approvals", "client:alice")] * 2
    )


async def test_without_elicitation_an_operator_approves_with_the_cli_once(
    wasm_engine: WasmEngine, tmp_path: Path, policy: Path
) -> None:
    state = tmp_path / "state"
    async with (
        service_for(state, wasm_engine, policy) as service,
        Client(build_server(service)) as client,
    ):
        first = await client.call_tool("run_code", CALL)
        assert first.is_error and first.structured_content is not None
        assert first.structured_content["rule"] == "/tools/run_code/action"
        [approval] = _asked_ids(state)
        assert approval is not None and approval in first.structured_content["reason"]
        assert main(["approve", approval, "--state-dir", str(state)]) == 0
        second = await client.call_tool("run_code", CALL)
        assert not second.is_error and second.structured_content is not None
        assert second.structured_content["stdout"] == "approved run\n"
        assert service.gate.approval_status(approval) == "used"

        third = await client.call_tool("run_code", CALL)  # used once: asked for anew
        other = await client.call_tool("run_code", {"code": "print('other')"})
        for refused in (third, other):
            assert refused.is_error and refused.structured_content is not None
            assert refused.structured_content["rule"] == "/tools/run_code/action"
        asked = _asked_ids(state)
        assert len(asked) == 3 and len(set(asked)) == 3  # each a new approval, none approved
