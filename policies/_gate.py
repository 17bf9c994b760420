"""`Gate`: decides every tool call, reserves its counters, asks for approvals, and audits."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sandboxes import EgressConnection, Limits, StateMode

from ._approvals import ApprovalDesk
from ._audit import AuditDecision, AuditSink, canonical_json, iso_time, sha256_hex
from ._compile import CompiledPolicy, CompiledTool, compile_policy, token_sha256
from ._decisions import Allowed, Decision, Denied, NeedsApproval, Outcome, ToolCall
from ._egress_quota import EgressExhausted, EgressTerms, charge_egress, egress_terms
from ._errors import AuditUnavailable, StateUnavailable, WouldWait
from ._model import Policy, grant_share
from ._predicates import Subject
from ._steps import (
    Refusal,
    approval_rule,
    build_plan,
    counter_specs,
    find_exhausted,
    limit_refusal,
    static_refusal,
)
from ._store import ApprovalRecord, ApprovalStatus, CounterStore
from ._watch import PolicyWatcher

logger = logging.getLogger("sandgate.policy")

COUNTED: frozenset[Outcome] = frozenset({"completed", "cancelled"})
"""Outcomes whose reservation is committed: the call used its resources (or could have)."""


class _Pass(NamedTuple):
    """The call passed every check; what it reserved and which approval it used."""

    reservation: str | None = None
    approval_id: str | None = None
    egress: EgressTerms | None = None


class _Context(NamedTuple):
    """One decision in progress."""

    call: ToolCall
    compiled: CompiledPolicy
    tool: CompiledTool
    subject: Subject
    decision_id: str
    args_sha256: str | None
    now: float


class Gate:
    """The policy gate in front of every tool call. Thread-safe.

    Args:
        policy: The policy to enforce.
        store: Where counters and approvals live (shared by replicas with Redis).
        audit: Where every decision, outcome and approval is written (a file or a Redis
            stream).
        clock: Unix time source (tests pass a fake clock to move windows without sleeping).
        policy_path: The policy's file; when given, `decide` reloads it when it changes.
    """

    def __init__(
        self,
        policy: Policy,
        store: CounterStore,
        audit: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
        policy_path: Path | None = None,
    ) -> None:
        self._compiled = compile_policy(policy)
        self._store = store
        self._audit = audit
        self._clock = clock
        self._watcher = (
            None if policy_path is None else PolicyWatcher(Path(policy_path), self._compiled)
        )
        self._desk = ApprovalDesk(store, audit, clock)
        self._loaded_at = clock()

    @property
    def policy(self) -> Policy:
        """The policy in force (the last one that loaded)."""
        return self._compiled.policy

    @property
    def loaded_at(self) -> float:
        """Unix time the policy in force was loaded (at start, or by the last reload)."""
        return self._loaded_at

    @property
    def audit(self) -> AuditSink:
        """Where every decision, outcome and approval is written, and read back from."""
        return self._audit

    def _new_decision_id(self) -> str:
        """A fresh decision id (a subclass may choose it ahead, to record it before the
        decision is made)."""
        return os.urandom(16).hex()

    def decide(self, call: ToolCall) -> Decision:
        """Decide one call; the decision is audited before this returns.

        Order: hidden/unknown/denied tool → args_schema → require/deny_if → max_code_bytes →
        approval → counters (all reserved, or none). An `Allowed` must go back to `finish`.
        """
        self.reload_if_changed()
        return self._decide(call, wait=True)

    def try_decide(self, call: ToolCall) -> Decision | None:
        """`decide`, when deciding waits on nothing, for the server's event loop; else None,
        with nothing reserved or recorded (the caller then calls `decide` in a thread).

        It waits on nothing when the policy file has not changed (a reload reads and compiles
        it), the arguments are plain and small (`ARGS_DECIDED_AT_ONCE`: they are hashed), the
        call needs no approval and no egress terms (both read or write the store), the store
        reserves at once (`CounterStore.reserve_now`: SQLite when no other thread or process
        holds its lock and no upkeep is due; never Redis) and the audit sink appends locally.
        A call the counters refuse is decided again in a thread, which reads their usage."""
        if not self._audit.appends_locally:
            return None
        if self._watcher is not None and self._watcher.changed(self._compiled):
            return None
        if not _small_plain(call.args):
            return None
        try:
            return self._decide(call, wait=False)
        except WouldWait:
            return None

    def _decide(self, call: ToolCall, *, wait: bool) -> Decision:
        compiled = self._compiled
        roles = compiled.roles.get(call.grant, ())
        tool = compiled.tool(call.tool, roles)
        ctx = _Context(
            call,
            compiled,
            tool,
            Subject(call.tool, call.args, call.grant, call.session, roles),
            self._new_decision_id(),
            sha256_hex(canonical_json(call.args)),
            self._clock(),
        )
        if tool.mode == "off":
            return self._allow(
                ctx, tool.allow_rule, "Mode 'off': the policy is not enforced.", _Pass(), "allow"
            )
        try:
            result = self._evaluate(ctx, wait=wait)
        except StateUnavailable as exc:
            result = Refusal(
                "/state",
                f"The policy state store is unreachable ({exc.detail}); "
                "calls are denied until it is back.",
            )
        if isinstance(result, _Pass):
            return self._allow(
                ctx, tool.allow_rule, f"Allowed by {tool.allow_rule}.", result, "allow"
            )
        if tool.mode == "audit":
            return self._allow(
                ctx, result.rule, f"Audit mode, would deny: {result.reason}", _Pass(), "would_deny"
            )
        if isinstance(result, NeedsApproval):
            try:
                self._record(
                    ctx,
                    "needs_approval",
                    result.rule,
                    result.reason,
                    approval_id=result.approval_id,
                )
            except AuditUnavailable as exc:
                return _audit_denied(ctx, exc)
            return result
        try:
            self._record(ctx, "deny", result.rule, result.reason)
        except AuditUnavailable as exc:
            logger.error("cannot audit a denial: %s", exc)
        return Denied(ctx.decision_id, result.rule, result.reason, result.retry_after_s)

    def refuse(self, call: ToolCall, *, rule: str, reason: str) -> Denied:
        """Audit a call the server refused before it reached the policy (bad arguments, an
        unknown tool, a refused requirement) and return it as a denial. No counter moves.

        Args:
            call: The call as far as it was understood (its arguments may be partial).
            rule: Where the refusal comes from, e.g. `/arguments/file_name`.
            reason: The sentence the client was shown.
        """
        compiled = self._compiled
        tool = compiled.tool(call.tool)
        ctx = _Context(
            call,
            compiled,
            tool,
            Subject(call.tool, call.args, call.grant, call.session, ()),
            self._new_decision_id(),
            _args_hash(call.args),
            self._clock(),
        )
        try:
            self._record(ctx, "deny", rule, reason)
        except AuditUnavailable as exc:
            logger.error("cannot audit a refusal: %s", exc)
        return Denied(ctx.decision_id, rule, reason)

    def _evaluate(self, ctx: _Context, *, wait: bool) -> _Pass | Refusal | NeedsApproval:
        """The call's evaluation; `wait=False`: `WouldWait` before anything is written where
        it would read or write more than one reservation (approvals, egress terms, the usage
        of refused counters)."""
        tool, call, now = ctx.tool, ctx.call, ctx.now
        refusal = static_refusal(ctx.compiled, tool, call, ctx.subject)
        if refusal is not None:
            return refusal
        asked = approval_rule(tool, ctx.subject)
        if asked is not None and tool.mode == "audit":
            return Refusal(asked[0], f"This call needs a human's approval ({asked[1]}).")
        if not wait and (
            asked is not None or (tool.egress is not None and call.program is not None)
        ):
            raise WouldWait("approvals and egress terms are read from the store")
        approval_id = None
        if asked is not None:
            state = self._ask(ctx, asked)
            if not isinstance(state, str):
                return state
            approval_id = state
        specs = counter_specs(tool, call, ctx.subject)
        if isinstance(specs, Refusal):
            return specs
        reservation = None
        if specs:
            wanted = [spec for _, spec in specs]
            reserve = self._store.reserve if wait else self._store.reserve_now
            reservation = reserve(wanted, now)
            if reservation is None:
                if not wait:
                    raise WouldWait("the refused counters' usage is read from the store")
                usage = [self._store.used(spec, now) for _, spec in specs]
                index = find_exhausted(specs, usage)
                limit, spec = specs[index]
                return limit_refusal(limit, spec, *usage[index], now)
        egress = None
        if tool.egress is not None and call.program is not None:
            terms = egress_terms(
                tool.egress,
                self._store,
                tool=call.tool,
                grant=call.grant,
                session=call.session,
                now=now,
            )
            if isinstance(terms, EgressExhausted):
                if reservation is not None:
                    self._store.rollback(reservation, now=now)
                return Refusal(terms.rule, terms.reason, terms.retry_after_s)
            egress = terms
        # Spend the approval last; if an identical call spent it first, undo the reservation.
        if asked is not None and approval_id and not self._store.use_approval(approval_id, now):
            if reservation is not None:
                self._store.rollback(reservation, now=now)
            return Refusal(
                asked[0],
                f"Approval {approval_id} was just used by an identical "
                "call; repeat this call to ask for a new approval.",
            )
        return _Pass(reservation, approval_id, egress)

    def _ask(self, ctx: _Context, asked: tuple[str, str]) -> NeedsApproval | Refusal | str:
        settings = ctx.compiled.policy.approvals
        assert ctx.args_sha256 is not None  # `decide` always hashes (its arguments are valid)
        return self._desk.check(
            ctx.call,
            ctx.args_sha256,
            asked,
            ctx.decision_id,
            settings.timeout_s,
            ctx.now,
            settings.by,
        )

    def _allow(
        self, ctx: _Context, rule: str, reason: str, passed: _Pass, decision: AuditDecision
    ) -> Decision:
        share = grant_share(ctx.compiled.policy, ctx.call.grant)
        plan = build_plan(ctx.tool, ctx.call, ctx.decision_id, pool_share=share)
        limits = None
        if plan is not None:  # only the caller-lowered timeout and memory differ (when asked)
            limits = ctx.tool.base_limits_record
            if plan.limits is not ctx.tool.base_limits:
                limits = {
                    **limits,
                    "wall_timeout_s": plan.limits.wall_timeout_s,
                    "memory_bytes": plan.limits.memory_bytes,
                }
        try:
            self._record(ctx, decision, rule, reason, limits=limits, approval_id=passed.approval_id)
        except AuditUnavailable as exc:
            if passed.reservation is not None:
                self._settle(passed.reservation, "infra_error")
            return _audit_denied(ctx, exc)
        return Allowed(
            ctx.decision_id,
            rule,
            reason,
            plan,
            passed.reservation,
            ctx.tool.mode,
            ctx.call,
            passed.approval_id,
            decision == "would_deny",
            _unmetered(ctx.tool) if passed.egress is None and plan is not None else passed.egress,
        )

    def _record(
        self,
        ctx: _Context,
        decision: AuditDecision,
        rule: str,
        reason: str,
        *,
        limits: Mapping[str, Any] | None = None,
        approval_id: str | None = None,
    ) -> None:
        call, program, tool = ctx.call, ctx.call.program, ctx.tool
        record = {
            "time": iso_time(ctx.now),
            "id": ctx.decision_id,
            "event": "decision",
            "decision": decision,
            "rule": rule,
            "reason": reason,
            "tool": call.tool,
            "grant": call.grant,
            "session": call.session,
            "arg_keys": sorted(call.args),
            "args_sha256": ctx.args_sha256,
            "code_sha256": sha256_hex(program.source.encode("utf-8")) if program else None,
            "engine": _engine_name(tool.engine, tool.profile),
            "limits": limits,
            "mode": tool.mode,
            "approval_id": approval_id,
        }
        self._audit.append_fields({k: v for k, v in record.items() if v is not None})

    def finish(
        self,
        allowed: Allowed,
        *,
        outcome: Outcome,
        status: str | None = None,
        usage: Mapping[str, Any] | None = None,
        error: str | None = None,
        egress_bytes: int = 0,
    ) -> None:
        """Commit the call's counters (`completed`, whatever the user code did, and
        `cancelled`: a cancelled run used its sandbox too) or roll them back (`infra_error`),
        charge the bytes its run moved through the egress proxy (`egress_bytes`) to the
        route's window quotas, and audit the outcome. Store and audit failures are logged."""
        if allowed.reservation is not None:
            self._settle(allowed.reservation, outcome)
        if allowed.egress is not None and egress_bytes > 0:
            try:
                charge_egress(self._store, allowed.egress, egress_bytes, self._clock())
            except StateUnavailable as exc:
                logger.warning("cannot charge %s egress bytes: %s", egress_bytes, exc)
        call, plan = allowed.call, allowed.plan
        self._audit_outcome(
            {
                "id": allowed.decision_id,
                "rule": allowed.rule,
                "tool": call.tool if call else None,
                "grant": call.grant if call else None,
                "session": call.session if call else None,
                "engine": _engine_name(plan.engine, plan.profile) if plan else None,
                "usage": dict(usage) if usage is not None else None,
                "status": status,
                "outcome": outcome,
                "error": error,
                "mode": allowed.mode,
                "approval_id": allowed.approval_id,
            }
        )

    def finish_waits(self, allowed: Allowed, *, outcome: Outcome, egress_bytes: int = 0) -> bool:
        """Whether `finish` may wait on I/O: a rollback (a write, behind the store's lock), a
        commit or an audit record that goes to Redis, an egress charge, an fsync'd record.
        A server runs such a finish off its event loop, so one call's settling never stalls
        another's; the rest (a commit in memory, one unsynced line of the audit file) it
        runs in place."""
        if allowed.reservation is not None and (
            outcome not in COUNTED or not self._store.commits_locally
        ):
            return True
        if allowed.egress is not None and egress_bytes > 0:
            return True
        return not self._audit.appends_locally

    def abandon(
        self,
        decision_id: str,
        reservation: str | None,
        call: ToolCall,
        *,
        engine: str | None,
        error: str,
    ) -> None:
        """Settle an allowed call whose runner was lost before it could `finish` (its node
        died), from what was recorded of it: roll back what it reserved and audit an
        `infra_error` outcome under its decision (nothing to audit without its id). Store and
        audit failures are logged."""
        if reservation is not None:
            self._settle(reservation, "infra_error")
        if not decision_id:
            return
        self._audit_outcome(
            {
                "id": decision_id,
                "tool": call.tool,
                "grant": call.grant,
                "session": call.session,
                "engine": engine,
                "status": "infra_error",
                "outcome": "infra_error",
                "error": error,
            }
        )

    def _audit_outcome(self, fields: Mapping[str, Any]) -> None:
        """Audit an allowed call's `outcome` record (`None` fields left out); failures are
        logged."""
        record = {
            "time": iso_time(self._clock()),
            "id": fields["id"],
            "event": "outcome",
            "decision": "allow",
        }
        record.update({k: v for k, v in fields.items() if v is not None})
        try:
            self._audit.append_fields(record)
        except AuditUnavailable as exc:
            logger.error("cannot audit the outcome of %s: %s", fields.get("id"), exc)

    def record_egress(self, allowed: Allowed, connections: Iterable[EgressConnection]) -> None:
        """Audit each connection an allowed run asked the egress proxy for (one `egress`
        record each: allowed or refused, by which rule, bytes each way). Failures are logged."""
        call = allowed.call
        for connection in connections:
            record = {
                "time": iso_time(self._clock()),
                "id": allowed.decision_id,
                "event": "egress",
                "decision": "allow" if connection.allowed else "deny",
                "rule": connection.rule,
                "reason": connection.reason,
                "tool": call.tool if call else None,
                "grant": call.grant if call else None,
                "session": call.session if call else None,
                "egress": {
                    "host": connection.host,
                    "port": connection.port,
                    "address": connection.address,
                    "bytes_up": connection.bytes_up,
                    "bytes_down": connection.bytes_down,
                    "cut": connection.cut,
                },
            }
            try:
                self._audit.append_fields({k: v for k, v in record.items() if v is not None})
            except AuditUnavailable as exc:
                logger.error("cannot audit an egress connection of %s: %s", call, exc)

    def _settle(self, reservation: str, outcome: Outcome) -> None:
        try:
            if outcome in COUNTED:
                self._store.commit(reservation)
            else:
                self._store.rollback(reservation, now=self._clock())
        except StateUnavailable as exc:
            logger.warning("cannot settle reservation %s (it counts as used): %s", reservation, exc)

    def route(self, tool: str) -> tuple[str, str | None]:
        """The engine kind and runtime the policy routes `tool`'s code to (what an allowed
        call's plan carries); for the tools that run none, what the gate would route."""
        compiled = self._compiled.tool(tool)
        return compiled.engine, compiled.runtime

    def terms(self, tool: str, grant: str | None = None) -> tuple[Limits, StateMode | None]:
        """What `tool`'s code runs under for `grant` (None: a grant without role quotas)
        before a caller asks for less: the policy's limits, the grant's roles' quotas on top
        (a requested timeout or memory is clamped to these), and what it says of `state`
        (None: the tool's own default)."""
        compiled = self._compiled.grant_tool(tool, grant)
        return compiled.base_limits, compiled.state

    def egress_allow(self, tool: str, grant: str | None = None) -> tuple[str, ...]:
        """The hosts `tool`'s egress route allows `grant` (None: a grant without role quotas),
        as the policy writes them (empty when its network is not an egress route): what its
        description tells the model."""
        route = self._compiled.grant_tool(tool, grant).egress
        return () if route is None else tuple(str(p) for p in route.allow)

    def visible_tools(self, names: Iterable[str]) -> list[str]:
        """`names` without the tools the policy hides (`hide`, or `action: hide`)."""
        compiled = self._compiled
        visible = []
        for name in names:
            tool = compiled.tool(name)
            hidden = name in compiled.hidden or any(a == "hide" for _, a, _ in tool.actions)
            if tool.mode == "off" or not hidden:
                visible.append(name)
        return visible

    def listed_tools(self, names: Iterable[str], grant: str) -> list[str]:
        """The tools of `names` that tools/list shows `grant`: never the hidden ones, and
        (unless `server.list_denied_tools`) none the policy refuses whatever the arguments
        (`action: deny`, unlisted under `default: deny`, a `require`/`deny_if` on the grant or
        its roles). Tools needing approval, and those refused only for some arguments or once a
        counter is full, are listed."""
        compiled = self._compiled
        visible = self.visible_tools(names)
        if compiled.policy.server.list_denied_tools:
            return visible
        roles = compiled.roles.get(grant, ())
        return [n for n in visible if not _refused_to(compiled, n, grant, roles)]

    def authenticate(self, token: str) -> str | None:
        """The grant whose `token_sha256` is the sha256 of `token`, or `None`."""
        digest = token_sha256(token)
        found = None
        for known, name in self._compiled.grants_by_token_hash.items():
            if hmac.compare_digest(known, digest):
                found = name
        return found

    def resolve_approval(
        self, approval_id: str, approved: bool, by: str = "api", *, note: str | None = None
    ) -> ApprovalRecord:
        """An operator approves or denies a pending approval (audited as `operator:<by>`,
        `operator:api` by default, with the operator's `note`), whatever `approvals.by` says;
        the operator API. A client's
        answer goes through `answer_approval`, which checks that it may answer and that the
        approval is its own.

        Raises:
            UnknownApproval: No pending approval has this id (unknown, expired, resolved).
            StateUnavailable: The store cannot be reached.
            AuditUnavailable: The answer was stored but could not be audited.
        """
        return self._desk.resolve(approval_id, approved, by, note)

    def answer_approval(
        self, call: ToolCall, approval_id: str, approved: bool, *, elicitation: bool
    ) -> ApprovalRecord:
        """The human at `call`'s client answers `approval_id` (audited as `client:<grant>`).

        Args:
            call: The call the client answered with (the approval must be bound to exactly
                this tool, these arguments, this grant and this session).
            approval_id: The approval the client says it answers.
            approved: The human's answer.
            elicitation: The client declared the elicitation capability.

        Raises:
            ApprovalRefused: The policy lets only an operator answer (`approvals.by:
                operator`), the client cannot elicit, or the approval is not this call's
                pending one; nothing changed, and the refusal is audited.
            StateUnavailable: The store cannot be reached.
            AuditUnavailable: The answer was stored but could not be audited.
        """
        self.reload_if_changed()
        return self._desk.answer_for_call(
            call,
            sha256_hex(canonical_json(call.args)),
            approval_id,
            approved,
            allowed=self._compiled.policy.approvals.by,
            elicitation=elicitation,
        )

    def approval_status(self, approval_id: str) -> ApprovalStatus:
        """`pending`, `approved`, `denied`, `used` or `expired`.

        Raises:
            UnknownApproval: No approval has this id.
            StateUnavailable: The store cannot be reached.
        """
        return self._desk.status(approval_id)

    def reload_if_changed(self) -> bool:
        """Reload the policy file if it changed (a cheap stat). An invalid file is refused,
        logged, and the previous policy stays. Counters are untouched. True if reloaded."""
        if self._watcher is None:
            return False
        compiled = self._watcher.poll(self._compiled)
        if compiled is None:
            return False
        self._compiled = compiled
        self._loaded_at = self._clock()
        return True


ARGS_DECIDED_AT_ONCE = 64 * 1024
"""`Gate.try_decide` decides a call in place only when its arguments are strings, numbers,
booleans or null, with at most this many characters of strings in all: hashing them then
costs the event loop tens of microseconds."""


def _small_plain(args: Mapping[str, Any]) -> bool:
    size = 0
    for value in args.values():
        if isinstance(value, str):
            size += len(value)
        elif value is not None and not isinstance(value, int | float):
            return False
    return size <= ARGS_DECIDED_AT_ONCE


def _args_hash(args: Mapping[str, Any]) -> str | None:
    """sha256 of refused arguments, or None when no JSON can hold them (nested too deeply)."""
    try:
        return sha256_hex(canonical_json(args))
    except (ValueError, TypeError, RecursionError):
        return None


def _audit_denied(ctx: _Context, exc: AuditUnavailable) -> Denied:
    logger.error("denying a call that cannot be audited: %s", exc)
    return Denied(
        ctx.decision_id,
        "/audit",
        f"The audit log cannot be written ({exc.detail}); calls are denied until it can.",
    )


_CALLER_PATHS = frozenset({"grant", "roles", "tool"})


def _refused_to(compiled: CompiledPolicy, name: str, grant: str, roles: tuple[str, ...]) -> bool:
    """Whether every call of `name` by `grant` is refused, judged without arguments."""
    tool = compiled.tool(name)
    if tool.mode != "enforce":
        return False
    if not tool.listed and compiled.policy.default == "deny":
        return True
    if any(action in ("deny", "hide") for _, action, _ in tool.actions):
        return True
    subject = Subject(name, {}, grant, "", roles)
    if any(p.keys[0] in _CALLER_PATHS and not p.holds(subject, "every") for p in tool.require):
        return True
    return any(p.keys[0] in _CALLER_PATHS and p.holds(subject, "any") for p in tool.deny_if)


def _unmetered(tool: CompiledTool) -> EgressTerms | None:
    """The egress terms of a call allowed without the counters (mode `off`, audit mode): the
    route and its per-call quotas, no window quotas."""
    route = tool.egress
    if route is None:
        return None
    return EgressTerms(route, route.max_bytes_per_call, route.max_connections_per_call)


def _engine_name(kind: str, profile: str) -> str:
    return kind if kind == profile else f"{kind}/{profile}"
