"""The SQLite counter log: one row per reservation, with a running total for O(log n) windows.

Each row of a counter key carries `cum`, the sum of `amount` over that key's rows up to and
including it (rows ordered by `(ts, cum)`). The units inside a sliding window are then
`cum(last row) - cum(first row in the window) + amount(first row in the window)`: two index
lookups, however many calls the window holds. Invariants kept by every writer (all inside one
`BEGIN IMMEDIATE` transaction):

- a new row's `ts`, `cum` and `expires_at` are at least those of the key's last row, so order
  by time, by running total and by expiry agree (a clock that steps back only keeps a call in
  its window a little longer, which errs on the side of denying);
- removing a row lowers `cum` of every later row of its key by the row's amount;
- pruning deletes only expired rows, and a key's last row expires last.
"""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS counter_log (
    key TEXT NOT NULL, ts REAL NOT NULL, cum INTEGER NOT NULL, amount INTEGER NOT NULL,
    reservation TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (key, ts, cum)) WITHOUT ROWID;
"""

Last = tuple[float, int, float]
"""(ts, cum, expires_at) of a key's last row."""


def last_row(conn: sqlite3.Connection, key: str) -> Last | None:
    """The key's newest row, or `None` when it has none."""
    row = conn.execute(_LAST, (key,)).fetchone()
    return None if row is None else (float(row[0]), int(row[1]), float(row[2]))


def window_usage(
    conn: sqlite3.Connection, key: str, since: float, last: Last | None
) -> tuple[int, float | None]:
    """Units of `key` in rows newer than `since`, and the oldest such row's time."""
    if last is None or last[0] <= since:
        return 0, None
    first = conn.execute(_FIRST, (key, since)).fetchone()
    return last[1] - int(first[1]) + int(first[2]), float(first[0])


def last_and_usage(
    conn: sqlite3.Connection, key: str, since: float
) -> tuple[Last | None, int, float | None]:
    """`last_row` and `window_usage` in one statement: the reserve path's only read."""
    row = conn.execute(_BOTH, (key, key, since)).fetchone()
    if row is None:
        return None, 0, None
    last = (float(row[0]), int(row[1]), float(row[2]))
    if row[3] is None:
        return last, 0, None
    return last, last[1] - int(row[4]) + int(row[5]), float(row[3])


_LAST = (
    "SELECT ts, cum, expires_at FROM counter_log WHERE key = ? ORDER BY ts DESC, cum DESC LIMIT 1"
)
_FIRST = "SELECT ts, cum, amount FROM counter_log WHERE key = ? AND ts > ? ORDER BY ts, cum LIMIT 1"
_BOTH = f"SELECT * FROM ({_LAST}) LEFT JOIN ({_FIRST}) ON 1"


RESERVE_ONE = f"""
INSERT INTO counter_log (key, ts, cum, amount, reservation, expires_at)
SELECT :key, MAX(:now, COALESCE(last.ts, :now)), COALESCE(last.cum, 0) + :amount, :amount,
       :reservation, MAX(:expires, COALESCE(last.expires_at, :expires))
FROM (SELECT 1) AS one
LEFT JOIN ({_LAST.replace("?", ":key")}) AS last ON 1
LEFT JOIN ({_FIRST.replace("key = ?", "key = :key").replace("?", ":since")}) AS first ON 1
WHERE COALESCE(last.cum - first.cum + first.amount, 0) + :amount <= :max
RETURNING ts
"""
"""Check and append in one statement, for a call with one counter. A writing statement takes
the database write lock before it reads, so alone it is as atomic as `BEGIN IMMEDIATE`."""

HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


def append(
    conn: sqlite3.Connection,
    key: str,
    now: float,
    amount: int,
    expires_at: float,
    reservation: str,
    last: Last | None,
) -> float:
    """Add a row of `amount` units; returns the time it was stored under."""
    ts, cum = now, amount
    if last is not None:
        ts, cum, expires_at = max(now, last[0]), last[1] + amount, max(expires_at, last[2])
    conn.execute(
        "INSERT INTO counter_log (key, ts, cum, amount, reservation, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key, ts, cum, amount, reservation, expires_at),
    )
    return ts


def remove(conn: sqlite3.Connection, key: str, ts: float, reservation: str) -> None:
    """Delete a reservation's row and lower the running total of every later row."""
    row = conn.execute(
        "SELECT cum, amount FROM counter_log WHERE key = ? AND ts = ? AND reservation = ?",
        (key, ts, reservation),
    ).fetchone()
    if row is None:
        return
    cum, amount = int(row[0]), int(row[1])
    conn.execute("DELETE FROM counter_log WHERE key = ? AND ts = ? AND cum = ?", (key, ts, cum))
    # Two steps through negative values, so no intermediate (key, ts, cum) collides.
    conn.execute(
        "UPDATE counter_log SET cum = -(cum - ?) "
        "WHERE key = ? AND (ts > ? OR (ts = ? AND cum > ?))",
        (amount, key, ts, ts, cum),
    )
    conn.execute(
        "UPDATE counter_log SET cum = -cum WHERE key = ? AND ts >= ? AND cum < 0", (key, ts)
    )


def prune(conn: sqlite3.Connection, now: float) -> None:
    """Delete rows whose every window has passed."""
    conn.execute("DELETE FROM counter_log WHERE expires_at < ?", (now,))
