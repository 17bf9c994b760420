"""What the gate is asked (`ToolCall`) and answers (`Allowed`, `Denied`, `NeedsApproval`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sandboxes import ExecutionPlan, Program, StateMode, WorkspacePaths

from ._rules import Mode

if TYPE_CHECKING:
    from ._egress_quota import EgressTerms

LOCAL_GRANT = "local"
"""The grant of the local user on stdio (no token)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as the runner received it.

    Attributes:
        tool: The tool name (`run_python_code`, `pyodide_execute`, ...).
        args: The arguments as the client sent them (already type-checked by the runner).
        grant: The client credential's name; `local` on stdio.
        session: The MCP session id; `local` on stdio.
        program: Execution tools only: what to run. The gate then returns a plan.
        workspace: Execution tools only: the session's folders. Required with `program`.
        requested_timeout_s: A caller-set timeout in seconds; clamped to the policy ceiling.
        requested_memory_bytes: A caller-set memory cap in bytes; clamped to the ceiling.
        default_state: The tool's own default for `state` (as its upstream server behaves),
            used when the policy does not say.
    """

    tool: str
    args: Mapping[str, Any]
    grant: str = LOCAL_GRANT
    session: str = LOCAL_GRANT
    program: Program | None = None
    workspace: WorkspacePaths | None = None
    requested_timeout_s: float | None = None
    requested_memory_bytes: int | None = None
    default_state: StateMode = "fresh"

    def __post_init__(self) -> None:
        if self.program is not None and self.workspace is None:
            raise ValueError(
                f"ToolCall(tool={self.tool!r}): `workspace` is required when `program` is "
                "given (got None); pass the session's WorkspacePaths"
            )


@dataclass(frozen=True, slots=True)
class Allowed:
    """The call may run. Pass it back to `Gate.finish` once the run ended.

    Attributes:
        decision_id: Audit id of this decision (also `plan.decision_id`).
        rule: The rule that allowed it (`/tools/run_code`, `/default`), or in audit mode the
            rule that would have denied it.
        reason: Why, in a sentence (in audit mode: what would have been denied).
        plan: What the engine runs, when the call carried a program.
        reservation: The counter reservation to commit or roll back; `None` if no counters.
        mode: The mode that applied: `enforce`, `audit` or `off`.
        call: The call that was decided.
        approval_id: The approval this call used, if it needed one.
        would_deny: Audit mode only: enforcing would have denied the call (by `rule`).
        egress: The run's egress route and what its quotas leave, when its `limits.network`
            is `egress` (the runner leases the proxy with it).
    """

    decision_id: str
    rule: str
    reason: str
    plan: ExecutionPlan | None
    reservation: str | None
    mode: Mode
    call: ToolCall | None = None
    approval_id: str | None = None
    would_deny: bool = False
    egress: EgressTerms | None = None


@dataclass(frozen=True, slots=True)
class Denied:
    """The call must not run; show `reason` to the agent.

    Attributes:
        decision_id: Audit id of this decision.
        rule: JSON-pointer-like path of the deciding rule (`/default`, `/hide`,
            `/tools/run_code/action`, `/tools/x/limits/COUNTER`, `/tools/x/deny_if/0`,
            `/tools/x/args_schema`, `/tools/x/quotas/max_code_bytes`, `/state`, `/audit`).
        reason: A sentence for the agent: what was refused and what to do.
        retry_after_s: For a rate limit: seconds until the call could fit again.
    """

    decision_id: str
    rule: str
    reason: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class NeedsApproval:
    """A human must approve this exact call first (`sandgate approve ID`, or elicitation).

    Attributes:
        decision_id: Audit id of this decision.
        approval_id: What the human approves; repeat the identical call once it is approved.
        rule: The rule asking for approval (`/tools/x/action`, `/tools/x/approve_if/0`).
        reason: A sentence for the agent and the human.
        expires_at: Unix time after which the request expires.
        by: Who may answer (the policy's `approvals.by`): `operator` only, or also the human
            at a `client` that declared the elicitation capability.
    """

    decision_id: str
    approval_id: str
    rule: str
    reason: str
    expires_at: float = 0.0
    by: Literal["client", "operator"] = "operator"


Decision = Allowed | Denied | NeedsApproval
"""What `Gate.decide` returns."""

Outcome = Literal["completed", "cancelled", "refused", "infra_error"]
"""How an allowed call ended: `completed` (whatever the user code did), `cancelled` (the client
cancelled it; its sandbox was stopped), `refused` (refused after the allow, before anything ran:
the engine lacks a capability the call needs, or the caller's request was wrong) or
`infra_error` (the server failed to run it). Only `completed` and `cancelled` count."""
