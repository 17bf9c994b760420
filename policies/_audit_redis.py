"""`RedisAuditSink`: audit records in a Redis stream, one XADD per record, read back in order.

Several front ends (replicas, or the front ends of a Ray cluster) append to one stream: the
stream ids give the one order, and a record is acknowledged once Redis answered the XADD.
Durability is the server's: AOF (`appendonly yes`), and `appendfsync always` for records that
survive power loss (`audit.fsync: true` refuses a server that does not say so).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import redis

from ._audit import AuditEntry, AuditRecord, parse_record, record_line, unix_time
from ._errors import AuditUnavailable

logger = logging.getLogger("sandgate.policy")

DEFAULT_AUDIT_STREAM = "sandgate:audit"
"""The stream key records go to unless `audit.stream` names another."""
RECORD_FIELD = "r"
"""The stream entry's one field: the record's JSON text (as a line of the file sink)."""
READ_BATCH = 1000
"""Entries fetched per XRANGE while reading."""
CLOCK_SKEW_S = 60.0
"""How far apart the front ends' clocks and Redis's may be: reading `since` a time starts
this much earlier in the stream (its ids are Redis's clock) and filters by the records' time."""


class RedisAuditSink:
    """Audit records in the Redis stream `stream` (an `AuditSink`).

    Args:
        url: The Redis URL (redis://, rediss://, unix://).
        stream: The stream key.
        fsync: Require the server to fsync every write (`appendfsync always`): refuse to
            open otherwise.
        write: False opens it for reading only (`sandgate audit`); appends raise.
        timeout_s: Socket connect and read timeout: an append never waits longer.

    Raises:
        AuditUnavailable: Redis cannot be reached, or `fsync` is asked and the server does
            not fsync every write.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = DEFAULT_AUDIT_STREAM,
        fsync: bool = False,
        write: bool = True,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self._write = write
        self._closed = False
        self._warnings: tuple[str, ...] = ()
        with self._translate():
            self._client: redis.Redis = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
            if write:
                self._warnings = self._durability(fsync=fsync)
            else:
                self._client.ping()

    def __repr__(self) -> str:
        return f"RedisAuditSink({self.url!r}, stream={self.stream!r})"

    @property
    def where(self) -> str:
        """`redis stream KEY at URL`."""
        return f"redis stream {self.stream} at {self.url}"

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the server's configuration does not guarantee (found at open)."""
        return self._warnings

    @property
    def appends_locally(self) -> bool:
        """False: every append is a round trip to Redis."""
        return False

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """The one place Redis errors become `AuditUnavailable`."""
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise AuditUnavailable(self.where, f"Redis: {exc}") from exc

    def _durability(self, *, fsync: bool) -> tuple[str, ...]:
        """Check AOF; with `fsync`, refuse a server that does not fsync every write."""
        try:
            config = cast(dict[str, Any], self._client.config_get("append*"))
        except redis.ResponseError as exc:  # CONFIG renamed or refused (managed Redis)
            if fsync:
                raise AuditUnavailable(
                    self.where,
                    f"audit.fsync is true but the server's appendfsync cannot be read ({exc}); "
                    "allow CONFIG GET, or set audit.fsync to false if the server is known to "
                    "run with appendonly yes and appendfsync always",
                ) from exc
            return (f"{self.where}: cannot read the server's AOF settings ({exc})",)
        appendonly = str(config.get("appendonly", "no"))
        appendfsync = str(config.get("appendfsync", "everysec"))
        if fsync and (appendonly != "yes" or appendfsync != "always"):
            raise AuditUnavailable(
                self.where,
                "audit.fsync is true but the server runs with "
                f"appendonly {appendonly}, appendfsync {appendfsync}; run it with "
                "'appendonly yes' and 'appendfsync always', or set audit.fsync to false",
            )
        if appendonly != "yes":
            return (
                f"{self.where}: the server runs without AOF (appendonly {appendonly}): "
                "acknowledged audit records are lost if it restarts; run it with "
                "'appendonly yes' (and 'appendfsync always' to survive power loss)",
            )
        return ()

    def append(self, record: AuditRecord) -> None:
        """XADD one record; return once Redis acknowledged it.

        Raises:
            AuditUnavailable: Redis did not take it (down, timed out, sink closed).
        """
        self.append_fields(record.to_dict())

    def append_fields(self, fields: Mapping[str, Any]) -> None:
        """XADD one record given as its `AuditRecord` fields (`None` values left out).

        Raises:
            AuditUnavailable: Redis did not take it (down, timed out, sink closed).
        """
        if self._closed or not self._write:
            raise AuditUnavailable(self.where, "the audit sink is closed (or opened to read)")
        with self._translate():
            self._client.xadd(self.stream, {RECORD_FIELD: record_line(fields)})

    def entries(
        self, *, after: str | None = None, since: float | None = None
    ) -> Iterator[AuditEntry]:
        """The stream's records in order, after the stream id `after`, from the Unix time
        `since` (stream ids are the server's milliseconds).

        Raises:
            AuditUnavailable: Redis cannot be reached.
        """
        start = f"({after}" if after else "-"
        if since is not None:
            from_time = f"{max(int((since - CLOCK_SKEW_S) * 1000), 0)}-0"
            if after is None or _id_key(from_time) > _id_key(after):
                start = from_time
        while True:
            with self._translate():
                batch = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    self._client.xrange(self.stream, min=start, max="+", count=READ_BATCH),
                )
            for raw_id, data in batch:
                entry_id = raw_id.decode()
                raw = data.get(RECORD_FIELD.encode())
                record = parse_record(raw) if raw is not None else None
                if record is None:
                    logger.debug("skipping unreadable audit entry %s in %s", entry_id, self.where)
                elif since is None or (unix_time(record) or 0.0) >= since:
                    yield AuditEntry(entry_id, record)
                start = f"({entry_id}"
            if len(batch) < READ_BATCH:
                return

    def close(self) -> None:
        """Close the connections; later appends raise `AuditUnavailable`."""
        if not self._closed:
            self._closed = True
            self._client.close()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
