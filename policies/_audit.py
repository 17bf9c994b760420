"""The audit log: one JSON line per decision, outcome and approval, written before returning."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from ._errors import AuditUnavailable

logger = logging.getLogger("sandgate.policy")

AuditEvent = Literal["decision", "outcome", "approval", "egress"]
AuditDecision = Literal["allow", "deny", "would_deny", "needs_approval"]


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)
_LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_second_prefix: tuple[int, str] = (-1, "")


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces: equal arguments give equal bytes."""
    return _CANONICAL.encode(value).encode("utf-8", "surrogatepass")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def iso_time(unix: float) -> str:
    """`2025-01-31T12:00:00.000000Z` for a Unix time."""
    global _second_prefix
    second = math.floor(unix)
    cached, prefix = _second_prefix
    if cached != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_prefix = (second, prefix)
    return f"{prefix}.{min(int((unix - second) * 1e6), 999999):06d}Z"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the audit log. Arguments are never stored, only their keys and hash.

    Attributes:
        time: ISO-8601 UTC time of the event.
        id: The decision id (outcomes and approvals repeat the id they belong to).
        event: `decision`, `outcome` (how an allowed call ended), `approval`, or `egress`
            (one connection of an allowed run: `decision` allow or deny, by `rule`).
        decision: `allow`, `deny`, `would_deny` (audit mode) or `needs_approval`.
        rule: The deciding rule (`/tools/x/limits/COUNTER`, `/default`, ...).
        reason: The sentence the agent was shown.
        tool: The tool called.
        grant: The caller's grant.
        session: The caller's session.
        arg_keys: The argument names, sorted.
        args_sha256: sha256 of the canonical JSON arguments.
        code_sha256: sha256 of the program source, when the call carried one.
        engine: The engine profile that runs it.
        limits: The run's limits (seconds, bytes), when a plan was made.
        usage: What the run used (outcome records).
        status: How the user's code ended (`ok`, `error`, `timeout`, ...).
        outcome: `completed`, `cancelled` (by the client) or `infra_error`.
        error: The infrastructure error, for `infra_error`.
        mode: The policy mode that applied.
        approval_id: The approval asked for, used, approved or denied.
        by: Who approved or denied (approval records).
        egress: Egress records: `host`, `port`, `address`, `bytes_up`, `bytes_down`, `cut`.
    """

    time: str
    id: str
    event: AuditEvent
    decision: AuditDecision | None = None
    rule: str | None = None
    reason: str | None = None
    tool: str | None = None
    grant: str | None = None
    session: str | None = None
    arg_keys: tuple[str, ...] | None = None
    args_sha256: str | None = None
    code_sha256: str | None = None
    engine: str | None = None
    limits: Mapping[str, Any] | None = None
    usage: Mapping[str, Any] | None = None
    status: str | None = None
    outcome: str | None = None
    error: str | None = None
    mode: str | None = None
    approval_id: str | None = None
    by: str | None = None
    egress: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict, leaving out empty fields."""
        return {n: v for n in _FIELDS if (v := getattr(self, n)) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Read a record back; unknown keys (from newer versions) are ignored."""
        known = {k: v for k, v in data.items() if k in _FIELDS}
        if isinstance(known.get("arg_keys"), list):
            known["arg_keys"] = tuple(known["arg_keys"])
        return cls(**known)


_FIELDS = tuple(f.name for f in fields(AuditRecord))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One record read back from a sink, with where it sits.

    Attributes:
        cursor: Its position: the byte offset after its line in a file, the stream id in
            Redis. Reading again `after` it yields the records written since (tailing).
        record: The record.
    """

    cursor: str
    record: AuditRecord


class AuditSink(Protocol):
    """Where audit records go and are read back from, in the order they were acknowledged.

    Kept by `AuditLog` (a JSON-lines file) and `RedisAuditSink` (a Redis stream). After
    `close`, `append_fields` raises `AuditUnavailable`; reading still works.
    """

    @property
    def where(self) -> str:
        """The sink as an operator names it: the file, or `redis stream KEY at URL`."""
        ...

    @property
    def warnings(self) -> tuple[str, ...]:
        """Durability the sink could not confirm (e.g. Redis without AOF), found at open."""
        ...

    @property
    def appends_locally(self) -> bool:
        """True when an append is one write to a local file and nothing more (no fsync, no
        network): the server may append on its event loop."""
        ...

    def append(self, record: AuditRecord) -> None:
        """Write one record; return once the sink acknowledged it.

        Raises:
            AuditUnavailable: It was not written (disk full, Redis down, sink closed).
        """
        ...

    def append_fields(self, fields: Mapping[str, Any]) -> None:
        """Write one record given as its `AuditRecord` fields (`None` values left out).

        Raises:
            AuditUnavailable: It was not written (disk full, Redis down, sink closed).
        """
        ...

    def entries(
        self, *, after: str | None = None, since: float | None = None
    ) -> Iterator[AuditEntry]:
        """The records in order: those after the cursor `after`, and (when given) written at
        or after the Unix time `since`. A torn or unreadable record is skipped.

        Raises:
            AuditUnavailable: The sink cannot be read.
        """
        ...

    def close(self) -> None:
        """Release the sink; later appends raise `AuditUnavailable`."""
        ...


def records(sink: AuditSink, *, since: float | None = None) -> Iterator[AuditRecord]:
    """The records of `sink` in order (those at or after `since`, when given)."""
    for entry in sink.entries(since=since):
        yield entry.record


def unix_time(record: AuditRecord) -> float | None:
    """The record's time as Unix seconds; None when it is not an ISO-8601 time."""
    try:
        when = datetime.fromisoformat(record.time)
    except ValueError:
        return None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


class AuditLog:
    """Append-only JSON-lines audit file, safe across threads and processes (an `AuditSink`).

    Each record is one `os.write` on an `O_APPEND` descriptor, done before the method
    returns, so a record that was acknowledged survives a SIGKILL of the server.

    Args:
        path: The file (created with mode 0600, parent folders with 0700).
        fsync: Also fsync after every record, to survive power loss.
        write: False opens it for reading only (`sandgate audit`): nothing is created and
            appends raise `AuditUnavailable`.

    Raises:
        AuditUnavailable: The file cannot be opened.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False, write: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        if not write:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise AuditUnavailable(self.path, str(exc)) from exc

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    @property
    def where(self) -> str:
        """The file."""
        return str(self.path)

    @property
    def warnings(self) -> tuple[str, ...]:
        """None: the file's guarantees are the OS's."""
        return ()

    @property
    def appends_locally(self) -> bool:
        """True unless each record is fsync'd (`fsync`): then an append waits on the disk."""
        return not self.fsync

    def entries(
        self, *, after: str | None = None, since: float | None = None
    ) -> Iterator[AuditEntry]:
        """The records in order, after the byte offset `after`, at or after `since`.

        Raises:
            AuditUnavailable: The file cannot be opened.
        """
        start = int(after) if after else 0
        for offset, record in _read_lines(self.path, start):
            if since is not None and (unix_time(record) or 0.0) < since:
                continue
            yield AuditEntry(str(offset), record)

    def append(self, record: AuditRecord) -> None:
        """Write one record and return once the OS has it.

        Raises:
            AuditUnavailable: The write failed (disk full, file closed).
        """
        self.append_fields(record.to_dict())

    def append_fields(self, fields: Mapping[str, Any]) -> None:
        """Write one record given as its `AuditRecord` fields (`None` values left out).

        The gate's fast path: the same line as `append`, without building the dataclass.

        Raises:
            AuditUnavailable: The write failed (disk full, file closed).
        """
        # An unpaired surrogate (from a caller's text) is kept as its JSON escape.
        line = record_line(fields) + b"\n"
        with self._lock:
            if self._fd is None:
                raise AuditUnavailable(self.path, "the audit log is closed (or opened to read)")
            try:
                view = memoryview(line)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                raise AuditUnavailable(self.path, str(exc)) from exc

    def close(self) -> None:
        """Close the file; later appends raise `AuditUnavailable`."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def parse_record(raw: bytes | str) -> AuditRecord | None:
    """A record from its JSON text; None when it is torn or not a record."""
    try:
        data = json.loads(raw)
        return AuditRecord.from_dict(data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None


def record_line(fields: Mapping[str, Any]) -> bytes:
    """The JSON text of one record (an unpaired surrogate kept as its JSON escape)."""
    return _LINE.encode(fields).encode("utf-8", "backslashreplace")


def _read_lines(path: Path, start: int) -> Iterator[tuple[int, AuditRecord]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise AuditUnavailable(path, str(exc)) from exc
    with handle:
        handle.seek(start)
        offset = start
        for raw in handle:
            if not raw.endswith(b"\n"):
                return  # a torn last line: not acknowledged, its cursor not passed
            offset += len(raw)
            record = parse_record(raw)
            if record is None:
                logger.debug("skipping unreadable audit line in %s before byte %d", path, offset)
                continue
            yield offset, record


def read_audit(path: str | Path) -> Iterator[AuditRecord]:
    """Yield the records of an audit file in order, skipping a torn (partly written) line.

    Raises:
        AuditUnavailable: The file cannot be opened.
    """
    for _offset, record in _read_lines(Path(path), 0):
        yield record
