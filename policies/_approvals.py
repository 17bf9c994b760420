"""Human approvals bound to one exact call, kept in the state store so any process can answer."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable

from ._audit import AuditLog, AuditRecord, iso_time
from ._decisions import NeedsApproval, ToolCall
from ._errors import UnknownApproval
from ._steps import Refusal
from ._store import ApprovalRecord, ApprovalStatus, CounterStore, approval_binding


class ApprovalDesk:
    """Creates, answers and looks up approvals for a gate.

    Args:
        store: Where approvals live (the gate's counter store).
        audit: Where answers are audited.
        clock: Unix time source.
    """

    def __init__(self, store: CounterStore, audit: AuditLog, clock: Callable[[], float]) -> None:
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
    ) -> NeedsApproval | Refusal | str:
        """The approval state of an identical call: a request to show (new or still pending),
        a refusal (a human said no), or the id of an approved, unused approval."""
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
            by = f" by {record.resolved_by}" if record.resolved_by else ""
            return Refusal(
                rule,
                f"A human denied this call{by} (approval "
                f"{record.approval_id}). Do not repeat it; change the request.",
            )
        if record.status == "approved":
            return record.approval_id
        wait = math.ceil(record.expires_at - now)
        return NeedsApproval(
            decision_id,
            record.approval_id,
            rule,
            f"This call needs a human's approval ({why}). Approval id: {record.approval_id}. "
            f"An operator can run `sandgate approve {record.approval_id}` within {wait} s; "
            "then repeat the identical call.",
            record.expires_at,
        )

    def resolve(self, approval_id: str, approved: bool, by: str) -> ApprovalRecord:
        """Answer a pending approval and audit the answer.

        Raises:
            UnknownApproval: No pending approval has this id.
            StateUnavailable: The store cannot be reached.
            AuditUnavailable: The answer was stored but could not be audited.
        """
        return answer_approval(self._store, self._audit, approval_id, approved, by, self._clock())

    def status(self, approval_id: str) -> ApprovalStatus:
        """The approval's status now.

        Raises:
            UnknownApproval: No approval has this id.
        """
        record = self._store.get_approval(approval_id)
        if record is None:
            raise UnknownApproval(approval_id)
        return record.status_at(self._clock())


def answer_approval(
    store: CounterStore, audit: AuditLog, approval_id: str, approved: bool, by: str, now: float
) -> ApprovalRecord:
    """Answer a pending approval in `store` and audit the answer in `audit`: what a running
    gate does, and what `sandgate approve` / `sandgate deny` do from another process.

    Raises:
        UnknownApproval: No pending approval has this id.
        StateUnavailable: The store cannot be reached.
        AuditUnavailable: The answer was stored but could not be audited.
    """
    record = store.resolve_approval(approval_id, approved, by, now)
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
            reason=f"{'approved' if approved else 'denied'} by {by}",
        )
    )
    return record
