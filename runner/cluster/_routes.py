"""The Redis table binding each session (grant, session id) to the node that holds it.

Every front end reads and writes the same table: a new session is placed with set-if-absent
(two front ends placing it at once agree on the first), and a session whose node died is
moved with compare-and-set (only one front end moves it, and only once).

An entry lives as long as its session: it expires `ttl_s` after its last use (the node ends
an idle session after `server.session_idle_s`; the front end passes that plus
`ROUTE_SLACK_S`, so the entry outlives the session it points to), and goes at once when the
session ends. The sessions placed on each node, which placement spreads, are a sorted set
scored by each entry's deadline, so a count is of live entries only and never negative.

    sandgate:cluster:session:<[grant, session]>   node@actor         (expires with the session)
    sandgate:cluster:placed:<node@actor>          {[grant, session]: deadline}
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

import redis

ROUTE = "sandgate:cluster:session:"
PLACED = "sandgate:cluster:placed:"
"""`<PLACED><node@actor>`: the sessions placed there, scored by when their entry expires."""
ROUTE_SLACK_S = 60.0
"""How much longer than the node's own idle end a session's entry lives."""

# KEYS: route key, placed prefix; ARGV: field, where, ttl ms, deadline
_PLACE = """
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  redis.call('ZADD', KEYS[2] .. ARGV[2], ARGV[4], ARGV[1])
  redis.call('PEXPIRE', KEYS[2] .. ARGV[2], ARGV[3])
  return ARGV[2]
end
return redis.call('GET', KEYS[1])
"""
# ARGV: field, ttl ms, deadline
_LOOKUP = """
local now = redis.call('GET', KEYS[1])
if not now then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2] .. now, ARGV[3], ARGV[1])
if redis.call('PTTL', KEYS[2] .. now) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2] .. now, ARGV[2])
end
return now
"""
# ARGV: field, lost, to, ttl ms, deadline; returns {1 if moved here, where it is now}
_MOVE = """
local now = redis.call('GET', KEYS[1])
if now and now ~= ARGV[2] then return {0, now} end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
if now then redis.call('ZREM', KEYS[2] .. now, ARGV[1]) end
redis.call('ZADD', KEYS[2] .. ARGV[3], ARGV[5], ARGV[1])
redis.call('PEXPIRE', KEYS[2] .. ARGV[3], ARGV[4])
return {1, ARGV[3]}
"""
# ARGV: field
_FORGET = """
local now = redis.call('GET', KEYS[1])
if not now then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2] .. now, ARGV[1])
return 1
"""


def _field(grant: str, session: str) -> str:
    return json.dumps([grant, session])


class SessionTable:
    """Where each session lives.

    Args:
        url: The policy's Redis (`state.url`).
        clock: Unix time (the deadlines placement counts by).
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0)
        self._clock = clock
        self._place = self._redis.register_script(_PLACE)
        self._lookup = self._redis.register_script(_LOOKUP)
        self._move = self._redis.register_script(_MOVE)
        self._forget = self._redis.register_script(_FORGET)

    def _keys(self, grant: str, session: str) -> tuple[list[str], str]:
        field = _field(grant, session)
        return [ROUTE + field, PLACED], field

    def _life(self, ttl_s: float) -> tuple[int, str]:
        return max(1, int(ttl_s * 1000)), repr(self._clock() + ttl_s)

    def node_of(self, grant: str, session: str) -> str | None:
        """The node holding the session, `None` when it was never placed (or its entry
        expired or was removed); reading does not keep it alive."""
        found = self._redis.get(ROUTE + _field(grant, session))
        return None if found is None else str(found)

    def use(self, grant: str, session: str, *, ttl_s: float) -> str | None:
        """The node holding the session, its entry kept `ttl_s` more (a call uses it)."""
        keys, field = self._keys(grant, session)
        ttl_ms, deadline = self._life(ttl_s)
        found = self._lookup(keys=keys, args=[field, ttl_ms, deadline])
        return None if found is None else str(found)

    def place(self, grant: str, session: str, node: str, *, ttl_s: float) -> str:
        """Put a new session on `node`; the node it is on if another front end placed it first."""
        keys, field = self._keys(grant, session)
        ttl_ms, deadline = self._life(ttl_s)
        return str(cast(str, self._place(keys=keys, args=[field, node, ttl_ms, deadline])))

    def move(
        self, grant: str, session: str, *, lost: str, to: str, ttl_s: float
    ) -> tuple[bool, str]:
        """Move a session off the dead node `lost` to `to`: whether this call moved it, and
        where it is now (another front end may have moved it first)."""
        keys, field = self._keys(grant, session)
        ttl_ms, deadline = self._life(ttl_s)
        moved, now = cast(
            list[object], self._move(keys=keys, args=[field, lost, to, ttl_ms, deadline])
        )
        return moved == 1, str(now)

    def forget(self, grant: str, session: str) -> bool:
        """The session ended: its entry goes; whether there was one."""
        keys, field = self._keys(grant, session)
        return bool(self._forget(keys=keys, args=[field]))

    def placed(self, where: str) -> dict[str, int]:
        """Sessions placed on `where` (node@actor) whose entry is live, by grant."""
        key = PLACED + where
        pipe = self._redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", repr(self._clock()))
        pipe.zrange(key, 0, -1)
        members = cast(list[str], pipe.execute()[1])
        return dict(Counter(str(json.loads(m)[0]) for m in members))

    def close(self) -> None:
        self._redis.close()
