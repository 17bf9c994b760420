"""The last hour of calls in minute buckets, per grant and per engine (what the console charts)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BUCKET_S = 60
"""One bucket per minute."""
WINDOW_BUCKETS = 60
"""Buckets kept: the last hour."""


@dataclass(slots=True)
class Bucket:
    """What one grant (or engine) did in one minute."""

    calls: int = 0
    denials: int = 0
    approvals: int = 0
    busy: int = 0
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0

    @property
    def latency_mean_s(self) -> float:
        """Mean latency of the minute's calls, 0 without calls."""
        return self.latency_sum_s / self.calls if self.calls else 0.0


@dataclass(frozen=True, slots=True)
class Series:
    """One grant's (or engine's) minutes, oldest first; `start` is the first minute's Unix time."""

    name: str
    start: float
    buckets: tuple[Bucket, ...]

    def total(self, what: str) -> float:
        """The sum of one `Bucket` field over the hour."""
        return float(sum(getattr(b, what) for b in self.buckets))


@dataclass(slots=True)
class _Table:
    minutes: dict[str, dict[int, Bucket]] = field(default_factory=dict)


class UsageWindow:
    """Counts each call in its minute, by grant and by engine; keeps the last hour. Thread-safe.

    Args:
        clock: Unix time source.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._grants = _Table()
        self._engines = _Table()
        self._minute = 0

    def record(
        self,
        *,
        grant: str,
        engine: str,
        decision: str,
        busy: bool,
        seconds: float,
        asked: bool = False,
    ) -> None:
        """Count one call: its final decision (`allow`, `deny`, ...), whether it asked a human
        for approval on the way, whether the server answered busy, and how long it took."""
        minute = math.floor(self._clock() / BUCKET_S)
        with self._lock:
            for table, name in ((self._grants, grant), (self._engines, engine)):
                minutes = table.minutes.setdefault(name, {})
                bucket = minutes.get(minute)
                if bucket is None:
                    bucket = minutes[minute] = Bucket()
                bucket.calls += 1
                bucket.denials += decision == "deny"
                bucket.approvals += asked or decision == "needs_approval"
                bucket.busy += busy
                bucket.latency_sum_s += seconds
                bucket.latency_max_s = max(bucket.latency_max_s, seconds)
            if minute != self._minute:  # a new minute: drop what fell out of the hour
                self._minute = minute
                self._forget(minute)

    def _forget(self, minute: int) -> None:
        oldest = minute - WINDOW_BUCKETS + 1
        for table in (self._grants, self._engines):
            for name in list(table.minutes):
                kept = {m: b for m, b in table.minutes[name].items() if m >= oldest}
                if kept:
                    table.minutes[name] = kept
                else:
                    del table.minutes[name]

    def by_grant(self) -> list[Series]:
        """The last hour per grant, by name."""
        return self._series(self._grants)

    def by_engine(self) -> list[Series]:
        """The last hour per engine (`none`: calls that ran no code), by name."""
        return self._series(self._engines)

    def _series(self, table: _Table) -> list[Series]:
        now = math.floor(self._clock() / BUCKET_S)
        first = now - WINDOW_BUCKETS + 1
        with self._lock:
            return [
                Series(
                    name,
                    float(first * BUCKET_S),
                    tuple(_copy(table.minutes[name].get(m)) for m in range(first, now + 1)),
                )
                for name in sorted(table.minutes)
            ]


def _copy(bucket: Bucket | None) -> Bucket:
    if bucket is None:
        return Bucket()
    return Bucket(
        bucket.calls,
        bucket.denials,
        bucket.approvals,
        bucket.busy,
        bucket.latency_sum_s,
        bucket.latency_max_s,
    )
