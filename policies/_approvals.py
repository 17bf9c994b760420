"""Human approvals bound to one exact call, kept in the state store so any process can answer.

Who may answer is the policy's `approvals.by`: an operator always (`sandgate approve/deny`,
audited as `operator:<name>`); with `by: client`, also the human at a client that declared the
elicitation capability, only for its own grant's approval of the exact call it answers with
(audited as `client:<grant>`). A refused answer changes nothing and is audited as a denial.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable

from ._audit import AuditRecord, AuditSink, iso_time
from ._decisions import NeedsApproval, ToolCall
from ._errors import ApprovalProblem, ApprovalRefused, AuditUnavailable, UnknownApproval
from ._model import ApprovalAnswerer
from ._steps import Refusal
from ._store import ApprovalRecord, ApprovalStatus, CounterStore, approval_binding

logger = logging.getLogger("sandgate.policy")


class ApprovalDesk:
    """Creates, answers and looks up approvals for a gate.

    Args:
        store: Where approvals live (the gate's counter store).
        audit: Where answers are audited.
        clock: Unix time source.
    """

    def __init__(self, store: CounterStore, audit: AuditSink, clock: Callable[[], float]) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock

    def check(
        self,
        call: ToolCall,
        args_sha256: str,
        asked: tuple[str, str],
        decision_id: str,
        ttl_s: float,
        now: float,
        by: ApprovalAnswerer = "operator",
    ) -> NeedsApproval | Refusal | str:
        """The approval state of an identical call: a request to show (new or still pending),
        a refusal (a human said no), or the id of an approved, unused approval. `by` is who
        may answer (the policy's `approvals.by`)."""
        rule, why = asked
        binding = approval_binding(call.tool, args_sha256, call.grant, call.session)
        record = self._store.find_approval(binding, now)
        if record is None:
            record = ApprovalRecord(
                approval_id=uuid.uuid4().hex[:12],
                binding=binding,
                tool=call.tool,
                grant=call.grant,
                session=call.session,
                args_sha256=args_sha256,
                status="pending",
                created_at=now,
                expires_at=now + ttl_s,
                ttl_s=ttl_s,
            )
            self._store.add_approval(record)
        if record.status == "denied":
            denier = f" by {record.resolved_by}" if record.resolved_by else ""
            return Refusal(
                rule,
                f"A human denied this call{denier} (approval "
                f"{record.approval_id}). Do not repeat it; change the request.",
            )
        if record.status == "approved":
            return record.approval_id
        wait = math.ceil(record.expires_at - now)
        who = (
            "The human at an MCP client that declared the elicitation capability is asked; "
            "otherwise an operator can run"
            if by == "client"
            else "An operator can run"
        )
        return NeedsApproval(
            decision_id,
            record.approval_id,
            rule,
            f"This call needs a human's approval ({why}). Approval id: {record.approval_id}. "
            f"{who} `sandgate approve {record.approval_id}` within {wait} s; "
            "then repeat the identical call.",
            record.expires_at,
            by,
        )

    def resolve(
        self, approval_id: str, approved: bool, by: str, note: str | None = None
    ) -> ApprovalRecord:
        """An operator answers a pending approval (audited as `operator:<by>`, with `note`).

        Raises:
            UnknownApproval: No pending approval has this id.
            StateUnavailable: The store cannot be reached.
            AuditUnavailable: The answer was stored but could not be audited.
        """
        return answer_approval(
            self._store, self._audit, approval_id, approved, by, self._clock(), note=note
        )

    def answer_for_call(
        self,
        call: ToolCall,
        args_sha256: str,
        approval_id: str,
        approved: bool,
        *,
        allowed: ApprovalAnswerer,
        elicitation: bool,
    ) -> ApprovalRecord:
        """The human at `call`'s client answers `approval_id` (audited as `client:<grant>`).

        Taken only when the policy lets clients answer (`allowed == "client"`), the client
        declared elicitation, and the approval is its grant's, bound to this exact call (tool,
        arguments, session) and pending. An approval already approved, answered `approve`
        again, is returned unchanged.

        Raises:
            ApprovalRefused: Any of that does not hold; nothing changed (the refusal is
                audited as a denial of the call; an audit failure is only logged).
            StateUnavailable: The store cannot be reached.
            AuditUnavailable: The answer was stored but could not be audited.
        """
        by = f"client:{call.grant}"
        now = self._clock()
        binding = approval_binding(call.tool, args_sha256, call.grant, call.session)
        problem: ApprovalProblem | None = None
        differs: tuple[str, ...] = ()
        status: str | None = None
        record = None
        if allowed != "client":
            problem = "operator_only"
        elif not elicitation:
            problem = "no_elicitation"
        else:
            record = self._store.get_approval(approval_id) if approval_id else None
            if record is None or record.grant != call.grant:
                problem = "not_found"  # another grant's approval is "not found", never named
            elif record.binding != binding:
                problem, differs = "other_call", _differences(record, call, args_sha256)
            elif (status := record.status_at(now)) != "pending":
                if status == "approved" and approved:
                    return record
                problem = "answered"
        if problem is None:
            try:
                return _answer(self._store, self._audit, approval_id, approved, by, now, binding)
            except UnknownApproval as exc:  # answered (or expired) since it was read
                problem, status = "answered", exc.status or "answered"
        refused = ApprovalRefused(
            approval_id,
            problem,
            by=by,
            differs=differs,
            status=status,
            decision_id=uuid.uuid4().hex,
        )
        record_of_refusal = AuditRecord(
            time=iso_time(now),
            id=refused.decision_id,
            event="decision",
            decision="deny",
            rule=refused.rule,
            reason=str(refused),
            tool=call.tool,
            grant=call.grant,
            session=call.session,
            arg_keys=tuple(sorted(call.args)),
            args_sha256=args_sha256,
            approval_id=approval_id or None,
            by=by,
        )
        try:
            self._audit.append(record_of_refusal)
        except AuditUnavailable as exc:  # the refusal stands whether or not it is audited
            logger.error("cannot audit a refused approval answer: %s", exc)
        raise refused

    def status(self, approval_id: str) -> ApprovalStatus:
        """The approval's status now.

        Raises:
            UnknownApproval: No approval has this id.
        """
        record = self._store.get_approval(approval_id)
        if record is None:
            raise UnknownApproval(approval_id)
        return record.status_at(self._clock())


def operator_answerer(name: str) -> str:
    """`operator:<name>`: how an operator's answer is recorded (never `client:...`)."""
    return name if name.startswith("operator:") else f"operator:{name}"


def answer_approval(
    store: CounterStore,
    audit: AuditSink,
    approval_id: str,
    approved: bool,
    by: str,
    now: float,
    *,
    note: str | None = None,
) -> ApprovalRecord:
    """An operator answers a pending approval in `store`, audited in `audit` as
    `operator:<by>` (with the operator's `note`, when given, in the record's reason): what
    `sandgate approve` / `sandgate deny` do from another process, and what
    `Gate.resolve_approval` does in the server's.

    Raises:
        UnknownApproval: No pending approval has this id.
        StateUnavailable: The store cannot be reached.
        AuditUnavailable: The answer was stored but could not be audited.
    """
    return _answer(store, audit, approval_id, approved, operator_answerer(by), now, None, note)


def _answer(
    store: CounterStore,
    audit: AuditSink,
    approval_id: str,
    approved: bool,
    by: str,
    now: float,
    binding: str | None,
    note: str | None = None,
) -> ApprovalRecord:
    """Store the answer (bound to `binding`, when given) and audit it with who answered."""
    record = store.resolve_approval(approval_id, approved, by, now, binding=binding)
    reason = f"{'approved' if approved else 'denied'} by {by}"
    audit.append(
        AuditRecord(
            time=iso_time(now),
            id=uuid.uuid4().hex,
            event="approval",
            decision="allow" if approved else "deny",
            tool=record.tool,
            grant=record.grant,
            session=record.session,
            args_sha256=record.args_sha256,
            approval_id=approval_id,
            by=by,
            reason=f"{reason}: {note}" if note else reason,
        )
    )
    return record


def _differences(record: ApprovalRecord, call: ToolCall, args_sha256: str) -> tuple[str, ...]:
    """What of `call` differs from the call `record` was asked for."""
    pairs = (
        ("tool", record.tool, call.tool),
        ("arguments", record.args_sha256, args_sha256),
        ("session", record.session, call.session),
    )
    return tuple(name for name, asked, given in pairs if asked != given)
