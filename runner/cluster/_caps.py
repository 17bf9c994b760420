"""The caps a cluster keeps for a grant across all its nodes (its sessions), refused by the
front end exactly as a single server refuses them.

A node's own service only sees the sessions it holds, so the front end checks
`server.max_sessions_per_grant` against the session table (every node's sessions of the
grant) when it places a new session or serves a fork, and answers a call over the cap the
way `Service._serve` answers a `ServerLimit`: a wrong call is named first, the refusal is
audited under its rule, nothing is counted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import mcp_types as types

from policies import Gate, ToolCall

from .._errors import ArgumentError, ServerLimit, UnknownTool
from .._service import Caller
from .._sessions import too_many_sessions
from ..snapshots._keeper import too_many_forks
from ..tools import TOOLS_BY_NAME, Invalid
from ..tools._arguments import check_request_size, validate_arguments
from ..tools._format import outcome_result


def sessions_over_cap(gate: Gate, held: int) -> ServerLimit:
    """The refusal of one more session to a grant that holds `held` in the cluster."""
    server = gate.policy.server
    return too_many_sessions(held, server.max_sessions_per_grant, server.session_idle_s)


def forks_over_cap(
    gate: Gate, arguments: Mapping[str, Any] | None, held: int
) -> ServerLimit | None:
    """The refusal of a `fork_session` call whose forks would take a grant holding `held`
    sessions in the cluster past its cap; `None` when they fit (or the count is wrong: the
    node names it)."""
    count = (arguments or {}).get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        return None
    cap = gate.policy.server.max_sessions_per_grant
    return too_many_forks(held, count, cap) if count > cap - held else None


def refusal(
    gate: Gate,
    served: Collection[str],
    visible: list[str],
    name: str,
    arguments: Mapping[str, Any] | None,
    caller: Caller,
    limit: ServerLimit,
) -> tuple[ToolCall, Invalid, types.CallToolResult]:
    """How a single server refuses the call for `limit`: the call to audit, the refusal
    (its rule and reason) and the result to send.

    Args:
        gate: The front end's gate (for the request size limit).
        served: The tool names served (an unknown tool is named first).
        visible: Those the refusal of an unknown tool lists.
        name: The tool called.
        arguments: Its arguments as sent.
        caller: Who called.
        limit: The cap the call would pass.
    """
    spec = TOOLS_BY_NAME.get(name)
    try:
        check_request_size(arguments, gate.policy.server.max_request_bytes)
        if name not in served or spec is None:
            raise UnknownTool(name, visible)
        validate_arguments(spec.arguments, arguments)
        raise limit
    except (ArgumentError, UnknownTool, ServerLimit) as exc:
        rule = f"/arguments/{exc.argument}" if isinstance(exc, ArgumentError) else "/tools"
        if isinstance(exc, ServerLimit):
            rule = exc.rule
        outcome = Invalid(rule, str(exc))
    safe_args = dict(arguments) if isinstance(arguments, Mapping) else {}
    call = ToolCall(tool=name, args=safe_args, grant=caller.grant, session=caller.session)
    if spec is None:
        return call, outcome, outcome_result(outcome, structured=False)
    return call, outcome, spec.result(outcome, None)
