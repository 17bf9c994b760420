"""Explain a hypothetical call: which rule decides it and why, against a throwaway state store
(what `sandgate policy explain` prints and the console's policy page shows)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from policies import Allowed, AuditLog, Denied, Gate, Policy, SqliteCounterStore, ToolCall
from sandboxes import Program, WorkspacePaths

CODE_TOOLS = frozenset({"run_python_code", "save_to_file_and_run", "run_code", "pyodide_execute"})
"""Tools whose `code` argument is the program the gate hashes and plans for."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """What the policy would decide about one call, and why.

    Attributes:
        decision: `allow`, `deny`, `needs_approval`, or `would_deny` (audit mode allows it).
        rule: The deciding rule (a JSON pointer into the policy).
        reason: The sentence the client would be shown.
        mode: The mode that applied (allowed calls).
        engine: The engine and profile that would run it (allowed calls with code).
        limits: The run's limits (allowed calls with code).
        counters: The rate limits the call counts against, one sentence each.
        roles: The grant's roles whose `roles` quotas applied, in the order they were
            applied (the later one wins a quota both set).
    """

    decision: Literal["allow", "deny", "needs_approval", "would_deny"]
    rule: str
    reason: str
    mode: str | None = None
    engine: str | None = None
    limits: Mapping[str, Any] | None = None
    counters: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


def explain_call(
    policy: Policy,
    *,
    tool: str,
    args: Mapping[str, Any],
    grant: str = "local",
    session: str = "local",
    timeout_s: float | None = None,
) -> Explanation:
    """Decide `tool(args)` for `grant` under `policy` with empty counters; nothing is kept."""
    with tempfile.TemporaryDirectory(prefix="sandgate-explain-") as tmp:
        scratch = Path(tmp)
        store = SqliteCounterStore(scratch / "state.sqlite3")
        audit = AuditLog(scratch / "audit.jsonl")
        try:
            gate = Gate(policy, store, audit)
            workspace = WorkspacePaths(files=scratch / "files", site=scratch / "site")
            program = program_of(tool, args)
            decision = gate.decide(
                ToolCall(
                    tool=tool,
                    args=dict(args),
                    grant=grant,
                    session=session,
                    program=program,
                    workspace=workspace if program else None,
                    requested_timeout_s=timeout_s,
                )
            )
        finally:
            store.close()
            audit.close()
    counters = tuple(_counters(policy, tool))
    held = policy.grants[grant].roles if grant in policy.grants else []
    roles = tuple(role for role in held if role in policy.roles)
    if isinstance(decision, Denied):
        return Explanation("deny", decision.rule, decision.reason, counters=counters, roles=roles)
    if not isinstance(decision, Allowed):  # the id in its reason belongs to the throwaway store
        reason = "A human must approve this exact call before it runs (sandgate approve ID)."
        return Explanation("needs_approval", decision.rule, reason, counters=counters, roles=roles)
    plan = decision.plan
    return Explanation(
        "would_deny" if decision.would_deny else "allow",
        decision.rule,
        decision.reason,
        mode=decision.mode,
        engine=None if plan is None else f"{plan.engine} (profile {plan.profile})",
        limits=None if plan is None else _limits(plan.limits),
        counters=counters,
        roles=roles,
    )


def program_of(tool: str, args: Mapping[str, Any]) -> Program | None:
    """The program a call of `tool` runs, when its arguments name one."""
    code = args.get("code")
    if tool in CODE_TOOLS and isinstance(code, str):
        return Program(kind="code", source=code)
    file_name = args.get("file_name")
    if tool == "run_python_file" and isinstance(file_name, str):
        return Program(kind="file", source=file_name)
    return None


def _limits(limits: Any) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in limits.__dataclass_fields__}


def _counters(policy: Policy, tool: str) -> Iterator[str]:
    rules = [("/limits", policy.limits)]
    if policy.all_tools is not None:
        rules.append(("/all_tools/limits", policy.all_tools.limits))
    if tool in policy.tools:
        rules.append((f"/tools/{tool}/limits", policy.tools[tool].limits))
    for where, limits in rules:
        for limit in limits:
            yield (
                f"{where}/{limit.counter}: at most {limit.max} per {limit.window} per {limit.scope}"
            )
