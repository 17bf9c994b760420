"""Filter the audit trail (what `sandgate audit query` prints, the console's audit page shows)."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from policies import AuditRecord, AuditSink


def parse_time(text: str) -> datetime:
    """An ISO-8601 time (UTC when it names no zone).

    Raises:
        ValueError: `text` is not an ISO-8601 time.
    """
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Records matching every field given (`None`: any).

    Attributes:
        id: The decision id (a decision, its outcome and its approvals share it).
        tool: The tool called.
        decision: `allow`, `deny`, `would_deny` or `needs_approval`.
        event: `decision`, `outcome` or `approval`.
        grant: The caller's grant.
        session: The caller's session.
        status: How the code ended (`ok`, `error`, `timeout`, ...; outcome records).
        since: Records at or after this time.
        until: Records before this time.
    """

    id: str | None = None
    tool: str | None = None
    decision: str | None = None
    event: str | None = None
    grant: str | None = None
    session: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: AuditRecord) -> bool:
        """Whether `record` passes every filter."""
        for name in _EXACT:
            wanted = getattr(self, name)
            if wanted is not None and getattr(record, name) != wanted:
                return False
        if self.since is None and self.until is None:
            return True
        try:
            when = parse_time(record.time)
        except ValueError:
            return False
        if self.since is not None and when < self.since:
            return False
        return self.until is None or when < self.until


_EXACT = tuple(f.name for f in fields(AuditQuery) if f.name not in ("since", "until"))


def query_audit(
    sink: AuditSink, query: AuditQuery, *, last: int | None = None
) -> Iterator[AuditRecord]:
    """The records of `sink` (a file or a Redis stream) matching `query`, in order (only the
    `last` ones, when given).

    Raises:
        AuditUnavailable: The sink cannot be read.
    """
    since = query.since.timestamp() if query.since is not None else None
    found = (e.record for e in sink.entries(since=since) if query.matches(e.record))
    if last is None:
        yield from found
    else:
        yield from collections.deque(found, maxlen=max(last, 0))
