"""The pure steps of a decision: static checks, counter specs, limit reasons and the plan."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sandboxes import ExecutionPlan

from ._compile import CompiledLimit, CompiledPolicy, CompiledTool
from ._decisions import ToolCall
from ._predicates import MISSING, CompiledPredicate, Subject, items_of, resolve
from ._store import CounterSpec


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is (or, in audit mode, would be) denied."""

    rule: str
    reason: str
    retry_after_s: float | None = None


def static_refusal(
    compiled: CompiledPolicy, tool: CompiledTool, call: ToolCall, subject: Subject
) -> Refusal | None:
    """Hidden/unknown/denied tool → args_schema → require/deny_if → max_code_bytes."""
    name = call.tool
    if name in compiled.hidden:
        return Refusal("/hide", f"The tool {name!r} is not available under this policy.")
    if not tool.listed and compiled.policy.default == "deny":
        return Refusal(
            "/default",
            f"The tool {name!r} is not allowed by this policy (it is "
            "not listed and the default is deny); use one of the allowed tools.",
        )
    for rule, action, reason in tool.actions:
        if action == "hide":
            return Refusal(rule, reason or f"The tool {name!r} is not available under this policy.")
        if action == "deny":
            return Refusal(rule, reason or f"The tool {name!r} is denied by this policy.")
    for rule, validator in tool.schemas:
        import jsonschema  # a schema here means `_compile` imported it already

        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(call.args)))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
            return Refusal(
                rule,
                f"The arguments do not match this policy's schema at "
                f"{where}: {error.message}. Fix the arguments and call again.",
            )
    for pred in tool.require:
        if not pred.holds(subject, "every"):
            return Refusal(pred.rule, _require_reason(pred, subject))
    for pred in tool.deny_if:
        if pred.holds(subject, "any"):
            return Refusal(
                pred.rule,
                f"This call is refused by the policy: {pred.path} "
                f"matches `{pred.op} {_show(pred.value)}`.",
            )
    program = call.program
    ceiling = tool.quotas.values.max_code_bytes
    if program is not None and program.kind == "code" and ceiling is not None:
        size = len(program.source.encode("utf-8"))
        if size > ceiling:
            return Refusal(
                tool.quotas.sources["max_code_bytes"],
                f"The code is {size} bytes; "
                f"this policy allows at most {ceiling} bytes (max_code_bytes). "
                "Send shorter code.",
            )
    return None


def _require_reason(pred: CompiledPredicate, subject: Subject) -> str:
    if resolve(pred.keys, subject) is MISSING:
        return f"The argument {pred.path} is missing, and this policy requires it."
    return (
        f"The policy requires {pred.path} to satisfy `{pred.op} {_show(pred.value)}`, "
        "and this call does not."
    )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def approval_rule(tool: CompiledTool, subject: Subject) -> tuple[str, str] | None:
    """(rule, why) when a human must approve the call first, else `None`."""
    for rule, action, reason in tool.actions:
        if action == "require_approval":
            return rule, reason or f"the policy asks for approval of every {subject.tool!r} call"
    for pred in tool.approve_if:
        if pred.holds(subject, "any"):
            return pred.rule, f"{pred.path} matches `{pred.op} {_show(pred.value)}`"
    return None


def counter_specs(
    tool: CompiledTool, call: ToolCall, subject: Subject
) -> list[tuple[CompiledLimit, CounterSpec]] | Refusal:
    """The counters this call reserves against, or a refusal for an unusable increment."""
    specs = []
    for limit in tool.limits:
        amount = limit.increment
        if limit.increment_from is not None:
            value = resolve(limit.increment_from, subject)
            items = None if value is MISSING else items_of(call.tool, limit.increment_from, value)
            if items is not None:
                amount = len(items)
            elif value is not MISSING:
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                    or value < 0
                ):
                    path = ".".join(limit.increment_from)
                    return Refusal(
                        limit.rule,
                        f"{path} must be a non-negative number or a "
                        f"list to count against {limit.counter!r}, got "
                        f"{_show(value)}.",
                    )
                amount = math.ceil(value)
        key = limit.key(call.tool, call.grant, call.session)
        specs.append((limit, CounterSpec(key, limit.window_s, limit.max, amount)))
    return specs


def limit_refusal(
    limit: CompiledLimit, spec: CounterSpec, used: int, oldest: float | None, now: float
) -> Refusal:
    """The denial for a counter that has no room for this call."""
    window = limit.window if limit.window in ("minute", "hour", "day") else f"{spec.window_s:g} s"
    head = (
        f"Rate limit {limit.counter!r} reached: at most {limit.max} per {window} per {limit.scope}"
    )
    if spec.increment > limit.max:
        return Refusal(
            limit.rule,
            f"{head}, and this call alone counts {spec.increment}. Split it into smaller calls.",
        )
    retry = spec.window_s if oldest is None else max(oldest + spec.window_s - now, 0.0)
    retry = max(math.ceil(retry * 10) / 10, 0.1)
    return Refusal(limit.rule, f"{head} ({used} used). Retry in {retry:g} s.", retry)


def find_exhausted(
    specs: Sequence[tuple[CompiledLimit, CounterSpec]], usage: Sequence[tuple[int, float | None]]
) -> int:
    """Index of the first spec without room (0 when a race freed the room meanwhile)."""
    for index, ((_, spec), (used, _)) in enumerate(zip(specs, usage, strict=True)):
        if used + spec.increment > spec.max:
            return index
    return 0


def build_plan(
    tool: CompiledTool, call: ToolCall, decision_id: str, *, pool_share: float
) -> ExecutionPlan | None:
    """The plan for a call carrying a program, with the caller's timeout and memory clamped to
    the tool's ceilings (a request can only lower a limit, never raise it), and the caller's
    grant and its share of the engines' pools."""
    if call.program is None or call.workspace is None:
        return None
    limits = tool.base_limits
    requested = call.requested_timeout_s
    if requested is not None and math.isfinite(requested) and 0 < requested < limits.wall_timeout_s:
        limits = dataclasses.replace(limits, wall_timeout_s=float(requested))
    memory = call.requested_memory_bytes
    if memory is not None and 0 < memory < limits.memory_bytes:
        limits = dataclasses.replace(limits, memory_bytes=int(memory))
    return ExecutionPlan(
        decision_id=decision_id,
        engine=tool.engine,
        program=call.program,
        limits=limits,
        workspace=call.workspace,
        session_id=call.session,
        profile=tool.profile,
        runtime=tool.runtime,
        state=tool.state or call.default_state,
        grant=call.grant,
        pool_share=pool_share,
    )
