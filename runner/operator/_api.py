"""What an operator does with a running server: answer approvals, read the audit trail, see
usage and sessions, read and explain the policy. The console is a client of this API; the CLI
(`sandgate approve`, `audit`, `policy explain`) runs the same functions from another process."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from policies import ApprovalRecord, AuditRecord, Gate, Policy, UnknownApproval

from .._admission import Admission
from .._sessions import Session, Sessions
from ._audit_query import AuditQuery, query_audit
from ._explain import Explanation, explain_call
from ._usage import Series, UsageWindow
from ._waiting import ApprovalRoom, PendingApproval


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """The policy in force.

    Attributes:
        policy: The policy.
        source: The file it was loaded from (None: built in memory).
        version: sha256 (first 12 hex digits) of its canonical JSON: equal policies, equal ids.
        loaded_at: Unix time it was loaded (at start or by the last reload).
    """

    policy: Policy
    source: Path | None
    version: str
    loaded_at: float


@dataclass(frozen=True, slots=True)
class Pools:
    """The run slots and each running engine's pool figures."""

    slots: int
    free: int
    waiting: int
    engines: Mapping[str, Mapping[str, int]]


class OperatedService(Protocol):
    """What `OperatorApi` reads and asks of the service it answers for (`runner.Service` is
    one): the service hands out an `OperatorApi` over itself, and this module never imports
    the service, so calls walk one way."""

    @property
    def gate(self) -> Gate: ...

    @property
    def approvals(self) -> ApprovalRoom: ...

    @property
    def usage(self) -> UsageWindow: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def sessions(self) -> Sessions: ...

    def tool_names(self) -> list[str]:
        """The tools the server lists (policy-hidden ones removed)."""
        ...

    def pool_stats(self) -> Mapping[str, Mapping[str, int]]:
        """Each running engine's pool figures."""
        ...

    async def end_session(self, grant: str, session_id: str) -> bool:
        """End a session; False when there was no such session."""
        ...


class OperatorApi:
    """The operator's view of one service.

    Args:
        service: The service it answers for.
    """

    def __init__(self, service: OperatedService) -> None:
        self._service = service

    async def pending_approvals(self) -> list[PendingApproval]:
        """The approvals this server asked for that are still pending in the store, oldest
        first (those answered elsewhere, used or expired are left out)."""
        gate = self._service.gate
        room = self._service.approvals
        listed = room.listing()

        def pending() -> list[PendingApproval]:
            kept = []
            for item in listed:
                try:
                    status = gate.approval_status(item.approval_id)
                except UnknownApproval:
                    status = "expired"
                if status == "pending":
                    kept.append(item)
                else:
                    room.settled(item.approval_id)
            return kept

        return await asyncio.to_thread(pending)

    async def resolve_approval(
        self, approval_id: str, approved: bool, *, by: str, note: str | None = None
    ) -> ApprovalRecord:
        """Approve or deny a pending approval, audited as `operator:<by>` with `note`; a call
        held for it wakes at once.

        Raises:
            UnknownApproval: No pending approval has this id (unknown, expired, answered).
            StateUnavailable: The store cannot be reached.
            AuditUnavailable: The answer was stored but could not be audited.
        """
        record = await asyncio.to_thread(
            self._service.gate.resolve_approval, approval_id, approved, by, note=note or None
        )
        self._service.approvals.answered(approval_id, note or None)
        return record

    async def audit(self, query: AuditQuery, *, last: int = 200) -> list[AuditRecord]:
        """The `last` records matching `query`, oldest first.

        Raises:
            AuditUnavailable: The audit sink cannot be read.
        """
        sink = self._service.gate.audit
        return await asyncio.to_thread(lambda: list(query_audit(sink, query, last=last)))

    async def audit_lines(self, query: AuditQuery) -> list[bytes]:
        """Every record matching `query`, as JSON lines (an export).

        Raises:
            AuditUnavailable: The audit sink cannot be read.
        """
        sink = self._service.gate.audit

        def lines() -> list[bytes]:
            return [
                json.dumps(r.to_dict(), ensure_ascii=False).encode() + b"\n"
                for r in query_audit(sink, query)
            ]

        return await asyncio.to_thread(lines)

    def policy(self) -> PolicyInfo:
        """The policy in force, its version and when it was loaded."""
        gate = self._service.gate
        policy = gate.policy
        text = json.dumps(policy.model_dump(mode="json"), sort_keys=True)
        version = hashlib.sha256(text.encode()).hexdigest()[:12]
        return PolicyInfo(policy, policy.source, version, gate.loaded_at)

    async def explain(
        self, *, tool: str, args: Mapping[str, Any], grant: str, session: str = "console"
    ) -> Explanation:
        """What the policy in force would decide about a hypothetical call (counters empty,
        nothing kept): `sandgate policy explain` against the running policy."""
        policy = self._service.gate.policy
        return await asyncio.to_thread(
            lambda: explain_call(policy, tool=tool, args=args, grant=grant, session=session)
        )

    def tools(self) -> list[str]:
        """The tools this server lists (hidden ones left out)."""
        return sorted(self._service.tool_names())

    def usage(self) -> tuple[list[Series], list[Series]]:
        """The last hour, per minute: by grant, and by engine."""
        usage = self._service.usage
        return usage.by_grant(), usage.by_engine()

    def pools(self) -> Pools:
        """Run slots, the queue for them, and each running engine's pool."""
        admission = self._service.admission
        return Pools(admission.slots, admission.free, admission.waiting, self._service.pool_stats())

    def sessions(self) -> list[Session]:
        """Every session held now, by grant then id."""
        return sorted(self._service.sessions.listing(), key=lambda s: (s.grant, s.id))

    async def end_session(self, grant: str, session_id: str) -> bool:
        """End `grant`'s session `session_id` (workspace removed, engines told); False when
        it holds no such session."""
        if not self._service.sessions.exists(grant, session_id):
            return False
        return await self._service.end_session(grant, session_id)
