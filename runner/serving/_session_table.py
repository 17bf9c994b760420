"""Which grant holds which MCP HTTP session, in Redis (`server.http_sessions: redis`).

The table every front end shares: a session is opened (within its grant's share), touched
(its idle time starts again) and ended by Lua scripts on Redis's own clock. Redis errors
become `SessionStoreUnavailable` here and nowhere else.
"""

from __future__ import annotations

import secrets
from typing import Any

_OPEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""
TOUCH_SESSION_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
"""
"""The start of a script on a session's keys (KEYS[1] its grant's set, KEYS[2] its own;
ARGV[1] the grant, ARGV[2] the idle time in ms, ARGV[3] the id): 0 unless the grant holds it,
else its idle time starts again and `now` (Redis's clock, ms) is set for the rest."""
_TOUCH = TOUCH_SESSION_LUA + "return 1\n"
_END = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[2])
return 1
"""

SESSION_ID_BYTES = 16
"""A session id is this many random bytes (128 bits), as hex."""
DEFAULT_SESSION_PREFIX = "sandgate:http-session:"
"""Redis keys: `<prefix>id:<session id>` -> grant, `<prefix>grant:<grant>` -> its open ids."""


class SessionStoreUnavailable(Exception):
    """The Redis holding the HTTP sessions cannot be reached (answered as 503)."""


class RedisSessionTable:
    """Which grant holds which MCP HTTP session, in Redis, shared by every front end.

    A session is a key (its grant, expiring `idle_s` after its last use) and a member of its
    grant's sorted set (scored by that expiry), which is how sessions are counted per grant
    across front ends. Times are Redis's own clock (`TIME`), so front ends' clocks never
    disagree about an expiry.

    Args:
        url: The Redis URL (`state.url`).
        prefix: Key prefix (tests give each their own).
        timeout_s: Socket connect and read timeout.
    """

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_SESSION_PREFIX, timeout_s: float = 2.0
    ) -> None:
        import redis.asyncio

        self.url = url
        self.prefix = prefix
        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._open = self._redis.register_script(_OPEN)
        self._touch = self._redis.register_script(_TOUCH)
        self._end = self._redis.register_script(_END)

    def session_keys(self, grant: str, sid: str) -> list[str]:
        """The keys of `grant`'s session `sid`: its grant's sorted set, its own key."""
        return [f"{self.prefix}grant:{grant}", f"{self.prefix}id:{sid}"]

    def script(self, text: str) -> Any:
        """A Lua script registered on this table's connections (for `run_script`)."""
        return self._redis.register_script(text)

    async def run_script(self, script: Any, keys: list[str], args: list[Any]) -> int:
        """Run a script of `script`: the one place Redis errors become
        `SessionStoreUnavailable`.

        Raises:
            SessionStoreUnavailable: Redis cannot be reached.
        """
        import redis

        try:
            return int(await script(keys=keys, args=args))
        except (redis.RedisError, OSError) as exc:
            raise SessionStoreUnavailable(f"{self.url}: {exc}") from exc

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> bool:
        return bool(await self.run_script(script, keys, args))

    async def open(self, grant: str, *, most: int, idle_s: float) -> str | None:
        """A new session id of `grant`; None when it already holds `most`.

        Raises:
            SessionStoreUnavailable: Redis cannot be reached.
        """
        sid = secrets.token_hex(SESSION_ID_BYTES)
        ttl_ms = max(int(idle_s * 1000), 1)
        opened = await self._run(
            self._open, self.session_keys(grant, sid), [grant, ttl_ms, most, sid]
        )
        return sid if opened else None

    async def touch(self, grant: str, sid: str, *, idle_s: float) -> bool:
        """Whether `sid` is an open session of `grant` (its idle time starts again if so).

        Raises:
            SessionStoreUnavailable: Redis cannot be reached.
        """
        ttl_ms = max(int(idle_s * 1000), 1)
        return await self._run(self._touch, self.session_keys(grant, sid), [grant, ttl_ms, sid])

    async def end(self, grant: str, sid: str) -> bool:
        """End `grant`'s session `sid`; False when it holds no such session.

        Raises:
            SessionStoreUnavailable: Redis cannot be reached.
        """
        return await self._run(self._end, self.session_keys(grant, sid), [grant, sid])

    async def aclose(self) -> None:
        """Close the connections."""
        await self._redis.aclose()
