"""`SqliteCounterStore`: counters and approvals in one SQLite file (WAL, `BEGIN IMMEDIATE`)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import _counter_log as log
from ._errors import StateUnavailable, UnknownApproval, WouldWait
from ._store import STALE_RESERVATION_S, ApprovalRecord, CounterSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, binding TEXT NOT NULL, tool TEXT NOT NULL, grant_name TEXT NOT NULL,
    session TEXT NOT NULL, args_sha256 TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, ttl_s REAL NOT NULL, resolved_by TEXT);
CREATE INDEX IF NOT EXISTS approvals_binding ON approvals (binding, created_at);
"""
_APPROVAL_COLUMNS = (
    "id, binding, tool, grant_name, session, args_sha256, status, created_at, "
    "expires_at, ttl_s, resolved_by"
)
_PRUNE_EVERY = 512
_KEEP_APPROVALS_S = 86400.0
CHECKPOINT_EVERY = 256
"""Write transactions between two checkpoints of the write-ahead log. The store's connection
never checkpoints on its own (`wal_autocheckpoint = 0`): a checkpoint writes the database file
and syncs it, which `reserve_now` must never do; a write that may wait runs it."""
_BUSY = (5, 6)
"""SQLITE_BUSY and SQLITE_LOCKED: another connection holds the lock a statement needs."""


class SqliteCounterStore:
    """Counters and approvals in a SQLite file; safe across threads and processes.

    Writers take the database lock with `BEGIN IMMEDIATE`, so the check-then-insert of a
    reservation is atomic; other processes wait up to `busy_timeout_s` for it. A counter is
    one row per call with a running total (see `_counter_log`), so a reservation is one small
    transaction and a window is counted in two index lookups however full it is. Which
    reservations are still open is kept in memory: `commit` costs no write and waits on no lock
    (`commits_locally`), and only the store that made a reservation can roll it back (one left
    open by a process that died simply counts, as a stale reservation does).

    The file is checked before each read or write: removed, the store is unavailable (fail
    closed; it is never silently recreated empty, which would reset every limit while other
    processes still count in the old file); replaced (a backup restored), it is reopened.

    `reserve_now` reserves without waiting (on the server's event loop): it gives up with
    `WouldWait`, having written nothing, where `reserve` would wait for a lock or do the file's
    upkeep (a checkpoint, pruning), which `reserve` then does.

    Args:
        path: The database file (created with mode 0600, parent folders with 0700).
        busy_timeout_s: Longest wait for another writer before the store reports itself
            unavailable.

    Raises:
        StateUnavailable: The file cannot be created or opened.
    """

    backend = "sqlite"
    commits_locally = True

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()  # `_open` alone: a commit never waits on SQLite
        self._calls = 0
        self._writes = 0  # write transactions since the last checkpoint
        self._open: OrderedDict[str, tuple[float, tuple[tuple[str, float], ...]]] = OrderedDict()
        self._busy_timeout_s = busy_timeout_s
        with self._translate():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            self._file = _file_identity(self.path)
            conn = self._connect()
        self._conn: sqlite3.Connection | None = conn

    def _connect(self) -> sqlite3.Connection:
        timeout = self._busy_timeout_s
        conn = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # `_upkeep` checkpoints instead
            conn.executescript(log.SCHEMA + _SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def __repr__(self) -> str:
        return f"SqliteCounterStore({str(self.path)!r})"

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """The one place SQLite and OS errors become `StateUnavailable`."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StateUnavailable("sqlite", f"{self.path}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translate():
            conn = self._connection()
            with _transaction(conn):
                yield conn
            self._upkeep(conn)

    def _upkeep(self, conn: sqlite3.Connection) -> None:
        """Count a write; every `CHECKPOINT_EVERY`, checkpoint the write-ahead log (as SQLite
        would on its own, without waiting for readers)."""
        self._writes += 1
        if self._writes >= CHECKPOINT_EVERY:
            self._writes = 0
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the store is closed")
        try:
            found = _file_identity(self.path)
        except FileNotFoundError:
            raise sqlite3.OperationalError(
                "the state file was removed while the server ran; restore it from a backup "
                "(a restart starts with empty counters)"
            ) from None
        if found != self._file:  # replaced, e.g. a backup restored: use the new file
            conn = self._connect()
            self._conn.close()
            self._conn, self._file = conn, found
        return self._conn

    def reserve(self, items: Sequence[CounterSpec], now: float) -> str | None:
        """Reserve all `items` or none; see `CounterStore.reserve`."""
        with self._lock, self._translate():
            conn = self._connection()
            got = self._reserve_on(conn, items, now)
            self._upkeep(conn)
            return got

    def reserve_now(self, items: Sequence[CounterSpec], now: float) -> str | None:
        """`reserve`, or `WouldWait` (nothing written) where it would wait: a thread of this
        process or another process holds the lock, the file was replaced (reopening it is
        file work), or a checkpoint or pruning is due."""
        if not self._lock.acquire(blocking=False):
            raise WouldWait("another thread is using the state store")
        try:
            if self._writes + 1 >= CHECKPOINT_EVERY or (self._calls + 1) % _PRUNE_EVERY == 0:
                raise WouldWait("the state file's upkeep is due")
            with self._translate():
                conn = self._conn
                if conn is None:
                    raise sqlite3.ProgrammingError("the store is closed")
                if _file_identity(self.path) != self._file:
                    raise WouldWait("the state file was replaced; it is reopened in a thread")
                conn.execute("PRAGMA busy_timeout = 0")
                try:
                    got = self._reserve_on(conn, items, now)
                except sqlite3.OperationalError as exc:
                    if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in _BUSY:
                        raise WouldWait("another process holds the state file's lock") from None
                    raise
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
                self._writes += 1  # counted, not checkpointed: that was not due
                return got
        finally:
            self._lock.release()

    def _reserve_on(
        self, conn: sqlite3.Connection, items: Sequence[CounterSpec], now: float
    ) -> str | None:
        """Reserve `items` on `conn`, the lock held: one autocommit statement for a single
        counter (`_reserve_one_on`), else one write transaction (`_reserve_all`)."""
        reservation = os.urandom(12).hex()
        if len(items) == 1 and items[0].increment > 0 and log.HAS_RETURNING:
            return self._reserve_one_on(conn, items[0], now, reservation)
        with _transaction(conn):
            return self._reserve_all(conn, items, now, reservation)

    def _reserve_all(
        self, conn: sqlite3.Connection, items: Sequence[CounterSpec], now: float, reservation: str
    ) -> str | None:
        """The reservation of every item, or None, inside the caller's write transaction."""
        lasts: dict[str, log.Last | None] = {}
        wanted: dict[str, tuple[int, float]] = {}
        for item in items:
            if item.key in lasts:
                used, _ = log.window_usage(conn, item.key, now - item.window_s, lasts[item.key])
            else:
                lasts[item.key], used, _ = log.last_and_usage(conn, item.key, now - item.window_s)
            if used + item.increment > item.max:
                return None
            amount, expires = wanted.get(item.key, (0, now))
            wanted[item.key] = (max(amount, item.increment), max(expires, now + item.window_s))
        made = tuple(
            (key, log.append(conn, key, now, amount, expires, reservation, lasts[key]))
            for key, (amount, expires) in wanted.items()
            if amount > 0
        )
        self._made(conn, reservation, now, made)
        return reservation

    def _reserve_one_on(
        self, conn: sqlite3.Connection, item: CounterSpec, now: float, reservation: str
    ) -> str | None:
        """The one-counter fast path: a single autocommit statement, no explicit transaction,
        on `conn` (the lock held)."""
        params = {
            "key": item.key,
            "now": now,
            "amount": item.increment,
            "max": item.max,
            "reservation": reservation,
            "expires": now + item.window_s,
            "since": now - item.window_s,
        }
        rows = conn.execute(log.RESERVE_ONE, params).fetchall()
        if not rows:
            return None
        self._made(conn, reservation, now, ((item.key, float(rows[0][0])),))
        return reservation

    def _made(
        self,
        conn: sqlite3.Connection,
        reservation: str,
        now: float,
        made: tuple[tuple[str, float], ...],
    ) -> None:
        """Remember an open reservation; now and then prune what every window has passed."""
        with self._open_lock:
            self._open[reservation] = (now, made)
            while self._open and next(iter(self._open.values()))[0] < now - STALE_RESERVATION_S:
                self._open.popitem(last=False)  # stale: counts as committed
        self._calls += 1
        if self._calls % _PRUNE_EVERY == 0:
            log.prune(conn, now)
            conn.execute("DELETE FROM approvals WHERE expires_at < ?", (now - _KEEP_APPROVALS_S,))

    def commit(self, reservation_id: str, *, now: float | None = None) -> None:
        """Make a reservation final: nothing to write (its rows already count), so nothing
        waits on the database, its lock or the threads using it (`commits_locally`)."""
        with self._open_lock:
            self._open.pop(reservation_id, None)

    def rollback(self, reservation_id: str, *, now: float | None = None) -> None:
        """Undo a reservation this store made, unless it is committed or stale."""
        now = time.time() if now is None else now
        with self._open_lock:
            made = self._open.pop(reservation_id, None)
        if made is None or made[0] < now - STALE_RESERVATION_S:
            return
        with self._tx() as conn:
            for key, ts in made[1]:
                log.remove(conn, key, ts, reservation_id)

    def used(self, item: CounterSpec, now: float) -> tuple[int, float | None]:
        """Units inside the window and the oldest entry's time."""
        with self._tx() as conn:
            last = log.last_row(conn, item.key)
            return log.window_usage(conn, item.key, now - item.window_s, last)

    def add_approval(self, record: ApprovalRecord) -> None:
        """Store a new approval."""
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO approvals ({_APPROVAL_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _row(record),
            )

    def find_approval(self, binding: str, now: float) -> ApprovalRecord | None:
        """The newest live approval for `binding`."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE binding = ? AND status IN "
                "('pending', 'approved', 'denied') AND expires_at > ? "
                "ORDER BY created_at DESC LIMIT 1",
                (binding, now),
            ).fetchone()
        return None if row is None else _record(row)

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        """The approval with this id, or `None`."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
        return None if row is None else _record(row)

    def resolve_approval(
        self, approval_id: str, approved: bool, by: str, now: float, *, binding: str | None = None
    ) -> ApprovalRecord:
        """Approve or deny a pending approval (bound to `binding`, when given)."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
            if row is None:
                raise UnknownApproval(approval_id)
            record = _record(row)
            if binding is not None and record.binding != binding:
                raise UnknownApproval(approval_id)
            if record.status_at(now) != "pending":
                raise UnknownApproval(approval_id, record.status_at(now))
            status = "approved" if approved else "denied"
            conn.execute(
                "UPDATE approvals SET status = ?, resolved_by = ?, expires_at = ? WHERE id = ?",
                (status, by, now + record.ttl_s, approval_id),
            )
        return _record((*row[:6], status, row[7], now + record.ttl_s, row[9], by))

    def use_approval(self, approval_id: str, now: float) -> bool:
        """Mark an approved approval used; `False` if it was not usable."""
        with self._tx() as conn:
            cursor = conn.execute(
                "UPDATE approvals SET status = 'used' WHERE id = ? AND "
                "status = 'approved' AND expires_at > ?",
                (approval_id, now),
            )
            return cursor.rowcount == 1

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on `conn` (`BEGIN IMMEDIATE`): committed when the block ends,
    rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of `path`: which file the name points at now."""
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _row(r: ApprovalRecord) -> tuple[object, ...]:
    return (
        r.approval_id,
        r.binding,
        r.tool,
        r.grant,
        r.session,
        r.args_sha256,
        r.status,
        r.created_at,
        r.expires_at,
        r.ttl_s,
        r.resolved_by,
    )


def _record(row: tuple[Any, ...] | sqlite3.Row) -> ApprovalRecord:
    (
        approval_id,
        binding,
        tool,
        grant,
        session,
        args_sha256,
        status,
        created_at,
        expires_at,
        ttl_s,
        resolved_by,
    ) = tuple(row)
    return ApprovalRecord(
        str(approval_id),
        str(binding),
        str(tool),
        str(grant),
        str(session),
        str(args_sha256),
        status,
        float(created_at),
        float(expires_at),
        float(ttl_s),
        None if resolved_by is None else str(resolved_by),
    )
