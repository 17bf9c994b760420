"""`Gate`: decides every tool call, reserves its counters, asks for approvals, and audits."""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._approvals import ApprovalDesk
from ._audit import AuditDecision, AuditLog, AuditRecord, canonical_json, iso_time, sha256_hex
from ._compile import CompiledPolicy, CompiledTool, compile_policy, token_sha256
from ._decisions import Allowed, Decision, Denied, NeedsApproval, Outcome, ToolCall
from ._errors import AuditUnavailable, PolicyLoadError, StateUnavailable
from ._loader import load_policy
from ._model import Policy
from ._predicates import Subject
from ._steps import (Refusal, approval_rule, build_plan, counter_specs, find_exhausted,
                     limit_refusal, static_refusal)
from ._store import ApprovalStatus, CounterStore

logger = logging.getLogger("sandgate.policy")


@dataclass(frozen=True, slots=True)
class _Pass:
    reservation: str | None
    approval_id: str | None


class Gate:
    """The policy gate in front of every tool call.

    Args:
        policy: The policy to enforce.
        store: Where counters and approvals live (shared by replicas with Redis).
        audit: Where every decision, outcome and approval is written.
        clock: Unix time source (tests pass a fake clock to move windows without sleeping).
        policy_path: The policy's file; when given, `decide` reloads it when it changes.
    """

    def __init__(self, policy: Policy, store: CounterStore, audit: AuditLog, *,
                 clock: Callable[[], float] = time.time, policy_path: Path | None = None) -> None:
        self._compiled = compile_policy(policy)
        self._store = store
        self._audit = audit
        self._clock = clock
        self._path = Path(policy_path) if policy_path is not None else None
        self._reload_lock = threading.Lock()
        self._signature = self._stat()
        self._desk = ApprovalDesk(store, audit, clock)

    @property
    def policy(self) -> Policy:
        """The policy in force (the last one that loaded)."""
        return self._compiled.policy

    def decide(self, call: ToolCall) -> Decision:
        """Decide one call; the decision is audited before this returns.

        Order: hidden/unknown/denied tool → args_schema → require/deny_if → max_code_bytes →
        approval → counters (all reserved, or none). An `Allowed` must be passed to `finish`.
        """
        if self._path is not None:
            self.reload_if_changed()
        compiled, now = self._compiled, self._clock()
        decision_id = uuid.uuid4().hex
        tool = compiled.tool(call.tool)
        subject = Subject(call.tool, call.args, call.grant, call.session,
                          compiled.roles.get(call.grant, ()))
        args_sha256 = sha256_hex(canonical_json(call.args))
        if tool.mode == "off":
            return self._allow(call, tool, decision_id, tool.allow_rule,
                               "Mode 'off': the policy is not enforced.", _Pass(None, None),
                               args_sha256, now, "allow")
        try:
            result = self._evaluate(compiled, tool, call, subject, decision_id, args_sha256, now)
        except StateUnavailable as exc:
            result = Refusal("/state", f"The policy state store is unreachable ({exc.detail}); "
                             "calls are denied until it is back.")
        if isinstance(result, _Pass):
            why = f"Allowed by {tool.allow_rule}."
            return self._allow(call, tool, decision_id, tool.allow_rule, why, result,
                               args_sha256, now, "allow")
        if tool.mode == "audit":
            return self._allow(call, tool, decision_id, result.rule,
                               f"Audit mode, would deny: {result.reason}", _Pass(None, None),
                               args_sha256, now, "would_deny")
        if isinstance(result, NeedsApproval):
            try:
                self._record(call, decision_id, args_sha256, now, "needs_approval",
                             result.rule, result.reason, tool, approval_id=result.approval_id)
            except AuditUnavailable as exc:
                logger.error("cannot audit an approval request: %s", exc)
                return Denied(decision_id, "/audit", f"The audit log cannot be written "
                              f"({exc.detail}); calls are denied until it can.")
            return result
        denied = Denied(decision_id, result.rule, result.reason, result.retry_after_s)
        try:
            self._record(call, decision_id, args_sha256, now, "deny", result.rule,
                         result.reason, tool)
        except AuditUnavailable as exc:
            logger.error("cannot audit a denial: %s", exc)
        return denied

    def _evaluate(self, compiled: CompiledPolicy, tool: CompiledTool, call: ToolCall,
                  subject: Subject, decision_id: str, args_sha256: str,
                  now: float) -> _Pass | Refusal | NeedsApproval:
        refusal = static_refusal(compiled, tool, call, subject)
        if refusal is not None:
            return refusal
        asked = approval_rule(tool, subject)
        approval_id = None
        if asked is not None:
            if tool.mode == "audit":
                return Refusal(asked[0], f"This call needs a human's approval ({asked[1]}).")
            ttl = compiled.policy.approvals.timeout_s
            state = self._desk.check(call, args_sha256, asked, decision_id, ttl, now)
            if not isinstance(state, str):
                return state
            approval_id = state
        specs = counter_specs(tool, call, subject)
        if isinstance(specs, Refusal):
            return specs
        reservation = None
        if specs:
            reservation = self._store.reserve([spec for _, spec in specs], now)
            if reservation is None:
                usage = [self._store.used(spec, now) for _, spec in specs]
                index = find_exhausted(specs, usage)
                limit, spec = specs[index]
                return limit_refusal(limit, spec, *usage[index], now)
        if approval_id is not None and not self._store.use_approval(approval_id, now):
            if reservation is not None:
                self._store.rollback(reservation, now=now)
            assert asked is not None
            ttl = compiled.policy.approvals.timeout_s
            state = self._desk.check(call, args_sha256, asked, decision_id, ttl, now)
            return state if not isinstance(state, str) else Refusal(asked[0], "The approval "
                                                                    "was used meanwhile.")
        return _Pass(reservation, approval_id)

    def _allow(self, call: ToolCall, tool: CompiledTool, decision_id: str, rule: str,
               reason: str, passed: _Pass, args_sha256: str, now: float,
               decision: AuditDecision) -> Decision:
        plan = build_plan(tool, call, decision_id)
        try:
            self._record(call, decision_id, args_sha256, now, decision, rule, reason, tool,
                         limits=asdict(plan.limits) if plan is not None else None,
                         approval_id=passed.approval_id)
        except AuditUnavailable as exc:
            if passed.reservation is not None:
                self._rollback_quietly(passed.reservation, now)
            logger.error("denying a call that cannot be audited: %s", exc)
            return Denied(decision_id, "/audit", f"The audit log cannot be written "
                          f"({exc.detail}); calls are denied until it can.")
        return Allowed(decision_id, rule, reason, plan, passed.reservation, tool.mode, call,
                       passed.approval_id)

    def finish(self, allowed: Allowed, *, outcome: Outcome, status: str | None = None,
               usage: Mapping[str, Any] | None = None, error: str | None = None) -> None:
        """Commit the call's counters (`completed`, whatever the user code did) or roll them
        back (`infra_error`), and audit the outcome."""
        now = self._clock()
        if allowed.reservation is not None:
            try:
                if outcome == "completed":
                    self._store.commit(allowed.reservation, now=now)
                else:
                    self._store.rollback(allowed.reservation, now=now)
            except StateUnavailable as exc:
                logger.warning("cannot settle reservation %s (it will count as used): %s",
                               allowed.reservation, exc)
        call = allowed.call
        record = AuditRecord(
            time=iso_time(now), id=allowed.decision_id, event="outcome", decision="allow",
            rule=allowed.rule, tool=call.tool if call else None,
            grant=call.grant if call else None, session=call.session if call else None,
            engine=_engine(allowed), usage=dict(usage) if usage is not None else None,
            status=status, outcome=outcome, error=error, mode=allowed.mode)
        try:
            self._audit.append(record)
        except AuditUnavailable as exc:
            logger.error("cannot audit the outcome of %s: %s", allowed.decision_id, exc)

    def _rollback_quietly(self, reservation: str, now: float) -> None:
        try:
            self._store.rollback(reservation, now=now)
        except StateUnavailable as exc:
            logger.warning("cannot roll back reservation %s: %s", reservation, exc)

    def _record(self, call: ToolCall, decision_id: str, args_sha256: str, now: float,
                decision: AuditDecision, rule: str, reason: str, tool: CompiledTool, *,
                limits: Mapping[str, Any] | None = None, approval_id: str | None = None) -> None:
        program = call.program
        self._audit.append(AuditRecord(
            time=iso_time(now), id=decision_id, event="decision", decision=decision, rule=rule,
            reason=reason, tool=call.tool, grant=call.grant, session=call.session,
            arg_keys=tuple(sorted(call.args)), args_sha256=args_sha256,
            code_sha256=sha256_hex(program.source.encode("utf-8")) if program else None,
            engine=_engine_name(tool.engine, tool.profile), limits=limits, mode=tool.mode,
            approval_id=approval_id))

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

    def authenticate(self, token: str) -> str | None:
        """The grant whose `token_sha256` is the sha256 of `token`, or `None`."""
        digest = token_sha256(token)
        found = None
        for known, name in self._compiled.grants_by_token_hash.items():
            if hmac.compare_digest(known, digest):
                found = name
        return found

    def resolve_approval(self, approval_id: str, approved: bool, by: str = "operator") -> None:
        """Approve or deny a pending approval (audited).

        Raises:
            UnknownApproval: No pending approval has this id (unknown, expired, resolved).
            StateUnavailable: The store cannot be reached.
        """
        self._desk.resolve(approval_id, approved, by)

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
        if self._path is None:
            return False
        signature = self._stat()
        if signature == self._signature:
            return False
        with self._reload_lock:
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                policy = load_policy(self._path)
            except PolicyLoadError as exc:
                logger.error("refusing the changed policy %s, keeping the previous one: %s",
                             self._path, exc)
                return False
            self._compiled = compile_policy(policy)
            self._signature = self._stat()
            logger.info("reloaded policy %s", self._path)
            return True

    def _stat(self) -> tuple[Any, ...]:
        if self._path is None:
            return ()
        files = [self._path]
        grants_file = self._compiled.policy.grants_file
        if grants_file is not None:
            files.append(Path(grants_file))
        signature: list[Any] = []
        for path in files:
            try:
                st = os.stat(path)
                signature.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
            except OSError as exc:
                signature.append(("missing", exc.errno))
        return tuple(signature)


def _engine_name(kind: str, profile: str) -> str:
    return kind if kind == profile else f"{kind}/{profile}"


def _engine(allowed: Allowed) -> str | None:
    plan = allowed.plan
    return None if plan is None else _engine_name(plan.engine, plan.profile)
