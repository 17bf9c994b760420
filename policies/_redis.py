"""`RedisCounterStore`: counters (sorted sets, Lua for atomic reserve) and approvals in Redis."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import redis

from ._errors import StateUnavailable, UnknownApproval, WouldWait
from ._store import STALE_RESERVATION_S, ApprovalRecord, CounterSpec

# A counter is a sorted set of `<reservation>:<amount>` members scored by time; members with
# an amount above 1 are also in `<key>:x`, so the common case is a ZCOUNT. `<key>:w` keeps the
# longest window ever used with the key, which is how far back entries are kept.
_RESERVE = """
local n = tonumber(ARGV[4])
local amounts, windows = {}, {}
for i = 1, n do
  local b = 4 + (i - 1) * 5
  local ki, lo, win = tonumber(ARGV[b + 1]), ARGV[b + 2], tonumber(ARGV[b + 3])
  local mx, inc = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local key = KEYS[ki]
  local used = redis.call('ZCOUNT', key, '(' .. lo, '+inf')
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key .. ':x', '(' .. lo, '+inf')) do
    used = used + tonumber(string.match(m, ':(%d+)$')) - 1
  end
  if used + inc > mx then return i end
  amounts[ki] = math.max(amounts[ki] or 0, inc)
  windows[ki] = math.max(windows[ki] or 0, win)
end
local now, res, stale = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local reskey = KEYS[#KEYS]
for ki, amount in pairs(amounts) do
  local key = KEYS[ki]
  local keep = math.max(tonumber(redis.call('GET', key .. ':w') or '0'), windows[ki])
  local ttl = math.ceil(keep) + 60
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
  redis.call('ZREMRANGEBYSCORE', key .. ':x', '-inf', now - keep)
  if amount > 0 then
    local member = res .. ':' .. amount
    redis.call('ZADD', key, ARGV[1], member)
    if amount > 1 then redis.call('ZADD', key .. ':x', ARGV[1], member) end
    redis.call('HSET', reskey, key, member)
  end
  redis.call('SET', key .. ':w', tostring(keep), 'EX', ttl)
  redis.call('EXPIRE', key, ttl)
  redis.call('EXPIRE', key .. ':x', ttl)
end
if redis.call('EXISTS', reskey) == 1 then redis.call('EXPIRE', reskey, stale) end
return 0
"""
_ROLLBACK = """
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  redis.call('ZREM', fields[i], fields[i + 1])
  redis.call('ZREM', fields[i] .. ':x', fields[i + 1])
end
return redis.call('DEL', KEYS[1])
"""
_RESOLVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'binding') ~= ARGV[4] then
  return 'missing'
end
local status = redis.call('HGET', KEYS[1], 'status')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
if status ~= 'used' and tonumber(ARGV[1]) >= expires then
  return 'expired'
end
if status ~= 'pending' then return status end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl_s'))
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'resolved_by', ARGV[3],
           'expires_at', tostring(tonumber(ARGV[1]) + ttl))
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 86400)
return 'ok'
"""
_USE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'approved' then return 0 end
if tonumber(ARGV[1]) >= tonumber(redis.call('HGET', KEYS[1], 'expires_at')) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'used')
return 1
"""
_KEEP_APPROVALS_S = 86400


class RedisCounterStore:
    """Counters and approvals in Redis, shared by every server replica using the same URL.

    Connecting is lazy: a server whose Redis is down starts, and denies calls that need state
    until Redis is back. Times are the callers' clocks, so replicas need synchronised clocks.

    Args:
        url: `redis://host:port/db`, `rediss://...` or `unix:///path/redis.sock`.
        prefix: Prefix of every key this store writes.
        timeout_s: Socket connect and read timeout; a call never waits longer for Redis.
    """

    backend = "redis"
    commits_locally = False

    def __init__(self, url: str, *, prefix: str = "sandgate:", timeout_s: float = 2.0) -> None:
        self.url = url
        self._prefix = prefix
        self._closed = False
        with self._translate():
            self._redis = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
            )
            self._reserve = self._redis.register_script(_RESERVE)
            self._rollback = self._redis.register_script(_ROLLBACK)
            self._resolve = self._redis.register_script(_RESOLVE)
            self._use = self._redis.register_script(_USE)

    def __repr__(self) -> str:
        return f"RedisCounterStore({self.url!r})"

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """The one place Redis errors become `StateUnavailable`."""
        if self._closed:
            raise StateUnavailable("redis", f"{self.url}: the store is closed")
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise StateUnavailable("redis", f"{self.url}: {exc}") from exc

    def _counter(self, key: str) -> str:
        return f"{self._prefix}c:{key}"

    def _approval(self, approval_id: str) -> str:
        return f"{self._prefix}a:{approval_id}"

    def reserve_now(self, items: Sequence[CounterSpec], now: float) -> str | None:
        """Never: every reservation is a round trip to the Redis server (`WouldWait`)."""
        raise WouldWait("a Redis reservation is a round trip")

    def reserve(
        self, items: Sequence[CounterSpec], now: float, *, reservation_id: str | None = None
    ) -> str | None:
        """Reserve all `items` or none; see `CounterStore.reserve`. `reservation_id` (a fresh
        unique id) names the reservation, for a caller that records it before it exists."""
        reservation = reservation_id or uuid.uuid4().hex
        keys: list[str] = []
        args: list[Any] = [repr(now), reservation, int(STALE_RESERVATION_S), len(items)]
        for item in items:
            key = self._counter(item.key)
            if key not in keys:
                keys.append(key)
            args += [
                keys.index(key) + 1,
                repr(now - item.window_s),
                repr(item.window_s),
                item.max,
                item.increment,
            ]
        with self._translate():
            failed = self._reserve(keys=[*keys, f"{self._prefix}r:{reservation}"], args=args)
        return reservation if failed == 0 else None

    def commit(self, reservation_id: str, *, now: float | None = None) -> None:
        """Make a reservation final."""
        with self._translate():
            self._redis.delete(f"{self._prefix}r:{reservation_id}")

    def rollback(self, reservation_id: str, *, now: float | None = None) -> None:
        """Undo a reservation (a no-op once committed or stale: its record is gone)."""
        with self._translate():
            self._rollback(keys=[f"{self._prefix}r:{reservation_id}"])

    def used(self, item: CounterSpec, now: float) -> tuple[int, float | None]:
        """Units inside the window and the oldest entry's time."""
        key, low = self._counter(item.key), f"({now - item.window_s!r}"
        with self._translate():
            pipe = self._redis.pipeline(transaction=True)
            pipe.zcount(key, low, "+inf")
            pipe.zrangebyscore(f"{key}:x", low, "+inf")
            pipe.zrangebyscore(key, low, "+inf", start=0, num=1, withscores=True)
            count, extra, oldest = pipe.execute()
        total = int(count) + sum(int(m.rsplit(":", 1)[1]) - 1 for m in extra)
        return total, (float(oldest[0][1]) if oldest else None)

    def add_approval(self, record: ApprovalRecord) -> None:
        """Store a new approval and index it by its binding."""
        ttl = math.ceil(record.expires_at - record.created_at) + _KEEP_APPROVALS_S
        mapping = {
            "binding": record.binding,
            "tool": record.tool,
            "grant": record.grant,
            "session": record.session,
            "args_sha256": record.args_sha256,
            "status": record.status,
            "created_at": repr(record.created_at),
            "expires_at": repr(record.expires_at),
            "ttl_s": repr(record.ttl_s),
            "resolved_by": record.resolved_by or "",
        }
        with self._translate():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self._approval(record.approval_id), mapping=mapping)
            pipe.expire(self._approval(record.approval_id), ttl)
            pipe.set(f"{self._prefix}ab:{record.binding}", record.approval_id, ex=ttl)
            pipe.execute()

    def find_approval(self, binding: str, now: float) -> ApprovalRecord | None:
        """The newest live approval for `binding`."""
        with self._translate():
            approval_id = self._redis.get(f"{self._prefix}ab:{binding}")
        record = None if approval_id is None else self.get_approval(str(approval_id))
        if record is None or record.status == "used" or record.status_at(now) == "expired":
            return None
        return record

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        """The approval with this id, or `None`."""
        with self._translate():
            fields = cast(dict[str, str], self._redis.hgetall(self._approval(approval_id)))
        if not fields:
            return None
        return ApprovalRecord(
            approval_id,
            fields["binding"],
            fields["tool"],
            fields["grant"],
            fields["session"],
            fields["args_sha256"],
            cast(Any, fields["status"]),
            float(fields["created_at"]),
            float(fields["expires_at"]),
            float(fields["ttl_s"]),
            fields["resolved_by"] or None,
        )

    def resolve_approval(
        self, approval_id: str, approved: bool, by: str, now: float, *, binding: str | None = None
    ) -> ApprovalRecord:
        """Approve or deny a pending approval (bound to `binding`, when given)."""
        status = "approved" if approved else "denied"
        with self._translate():
            answer = self._resolve(
                keys=[self._approval(approval_id)], args=[repr(now), status, by, binding or ""]
            )
        if answer != "ok":
            raise UnknownApproval(approval_id, None if answer == "missing" else str(answer))
        record = self.get_approval(approval_id)
        if record is None:
            raise UnknownApproval(approval_id)
        return record

    def use_approval(self, approval_id: str, now: float) -> bool:
        """Mark an approved approval used; `False` if it was not usable."""
        with self._translate():
            return bool(self._use(keys=[self._approval(approval_id)], args=[repr(now)]))

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._redis.close()
        except (redis.RedisError, OSError) as exc:
            raise StateUnavailable("redis", f"{self.url}: {exc}") from exc
