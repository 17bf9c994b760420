"""The Redis table binding each session (grant, session id) to the node that holds it.

Every front end reads and writes the same table: a new session is placed with set-if-absent
(two front ends placing it at once agree on the first), and a session whose node died is
moved with compare-and-set (only one front end moves it, and only once).

An entry lives as long as its session: it expires `ttl_s` after its last use (the node ends
an idle session after `server.session_idle_s`; the front end passes that plus
`ROUTE_SLACK_S`, so the entry outlives the session it points to), and goes at once when the
session ends. The sessions placed on each node, which placement spreads, and the sessions
each grant holds in the whole cluster, which `server.max_sessions_per_grant` caps, are sorted
sets scored by each entry's deadline, so a count is of live entries only and never negative.
A new session is checked against its grant's cap and counted in the same script that places
it, so two front ends placing at once cannot both pass the cap.

    sandgate:cluster:session:<[grant, session]>   node@actor         (expires with the session)
    sandgate:cluster:placed:<node@actor>          {[grant, session]: deadline}
    sandgate:cluster:grant:<grant>                {[grant, session]: deadline}
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
GRANT = "sandgate:cluster:grant:"
"""`<GRANT><grant>`: the grant's sessions on every node, scored by when their entry expires."""
ROUTE_SLACK_S = 60.0
"""How much longer than the node's own idle end a session's entry lives."""

# Every script: KEYS: route key, placed prefix, the grant's set. `_held` keeps the grant's
# set (its live entries, by deadline) alive as long as its longest-lived entry.
_HELD = """
local function held(field, ttl_ms, deadline)
  redis.call('ZADD', KEYS[3], deadline, field)
  if redis.call('PTTL', KEYS[3]) < tonumber(ttl_ms) then
    redis.call('PEXPIRE', KEYS[3], ttl_ms)
  end
end
"""
# ARGV: field, where, ttl ms, deadline, now, cap (0: none); returns {1, where it is} or, the
# grant at its cap, {0, live sessions it holds}
_PLACE = (
    _HELD
    + """
local there = redis.call('GET', KEYS[1])
if there then return {1, there} end
local cap = tonumber(ARGV[6])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5])
  local mine = redis.call('ZCARD', KEYS[3])
  if mine >= cap then return {0, tostring(mine)} end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2] .. ARGV[2], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[2] .. ARGV[2], ARGV[3])
held(ARGV[1], ARGV[3], ARGV[4])
return {1, ARGV[2]}
"""
)
# ARGV: field, ttl ms, deadline
_LOOKUP = (
    _HELD
    + """
local now = redis.call('GET', KEYS[1])
if not now then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2] .. now, ARGV[3], ARGV[1])
if redis.call('PTTL', KEYS[2] .. now) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2] .. now, ARGV[2])
end
held(ARGV[1], ARGV[2], ARGV[3])
return now
"""
)
# ARGV: field, lost, to, ttl ms, deadline; returns {1 if moved here, where it is now}
_MOVE = (
    _HELD
    + """
local now = redis.call('GET', KEYS[1])
if now and now ~= ARGV[2] then return {0, now} end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
if now then redis.call('ZREM', KEYS[2] .. now, ARGV[1]) end
redis.call('ZADD', KEYS[2] .. ARGV[3], ARGV[5], ARGV[1])
redis.call('PEXPIRE', KEYS[2] .. ARGV[3], ARGV[4])
held(ARGV[1], ARGV[4], ARGV[5])
return {1, ARGV[3]}
"""
)
# ARGV: field
_FORGET = """
redis.call('ZREM', KEYS[3], ARGV[1])
local now = redis.call('GET', KEYS[1])
if not now then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2] .. now, ARGV[1])
return 1
"""


def _field(grant: str, session: str) -> str:
    return json.dumps([grant, session])


class AtCap(Exception):
    """The grant already holds its cap of live sessions in the cluster; nothing was placed.

    Attributes:
        held: The live sessions the grant holds.
    """

    def __init__(self, held: int) -> None:
        super().__init__(f"the grant holds {held} live sessions")
        self.held = held


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
        return [ROUTE + field, PLACED, GRANT + grant], field

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

    def place(self, grant: str, session: str, node: str, *, ttl_s: float, cap: int = 0) -> str:
        """Put a new session on `node`; the node it is on if another front end placed it first.

        Args:
            cap: Live sessions the grant may hold in the whole cluster (`0`: no cap; a session
                already placed is never refused).

        Raises:
            AtCap: the session is new and the grant already holds `cap` live sessions.
        """
        keys, field = self._keys(grant, session)
        ttl_ms, deadline = self._life(ttl_s)
        args: list[str | int] = [field, node, ttl_ms, deadline, repr(self._clock()), max(0, cap)]
        placed, value = cast(list[object], self._place(keys=keys, args=args))
        if placed != 1:
            raise AtCap(int(str(value)))
        return str(value)

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

    def held(self, grant: str) -> int:
        """Live sessions `grant` holds in the whole cluster (what its cap counts)."""
        key = GRANT + grant
        pipe = self._redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", repr(self._clock()))
        pipe.zcard(key)
        return int(cast(int, pipe.execute()[1]))

    def close(self) -> None:
        self._redis.close()
