"""`notifications/cancelled` across front ends sharing their MCP sessions in Redis.

With `server.http_sessions: redis` the SDK runs stateless: every POST gets a server session of
its own, so a client's cancel (a POST of its own, maybe to another front end) never meets the
request it names. `SharedCancels` carries it there. Each front end holds its in-flight requests
by (grant, session id, JSON-RPC id), each with the cancel scope of its ASGI call; a cancel is
checked against the session table (the grant must hold that session, as for any request),
recorded for a short while and published on a Redis channel, in one script; every front end
listens to the channel and cancels the request it holds under exactly that key, which ends
the call as a hang-up does (the SDK's transport is torn down, the handler cancelled, the
engine stops the run, the audit says `cancelled`). A cancel that comes before its request
(two POSTs racing) is found when the request is admitted, and the request is not run, as
`EarlyCancels` does in one process. A session's `DELETE` ends its key and publishes a cancel
of all its requests in one script: every front end cancels what it holds of that session.

A request is registered here before it is admitted in Redis, and a cancel is recorded before
it is published, so one of the two always sees the other. Redis down: a cancel is applied to
this front end's own requests, logged, and otherwise dropped; the listener reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from starlette.types import Send

from ._cancelled import CANCELS_KEPT
from ._session_table import TOUCH_SESSION_LUA, RedisSessionTable

logger = logging.getLogger("sandgate.transports")

RequestId = str | int
Admission = Literal["open", "not_found", "cancelled"]
"""A request of a shared session: run it, answer 404, or (cancelled before it came) drop it."""

EARLY_CANCEL_TTL_S = 60.0
"""How long a cancel waits in Redis for a request that has not come yet (seconds)."""
LISTEN_RETRY_S = (0.1, 5.0)
"""The listener's first and longest wait before it subscribes again after losing Redis."""
HEALTH_CHECK_S = 10.0
"""The listener's connection is checked after this long without traffic (seconds)."""

_ADMIT = (
    TOUCH_SESSION_LUA
    + """
if redis.call('ZREM', KEYS[3], ARGV[4]) == 1 then return 2 end
return 1
"""
)
_CANCEL = (
    TOUCH_SESSION_LUA
    + """
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]))
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
"""
)

_END_SESSION = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
"""A session's end: its keys go and every front end hears to cancel its calls, at once."""


@dataclass(frozen=True, slots=True)
class CancelKey:
    """One in-flight request: its grant, its MCP session and its JSON-RPC id (as JSON, so
    `5` and `"5"` stay two ids)."""

    grant: str
    session: str
    request: str

    @classmethod
    def of(cls, grant: str, session: str, request_id: RequestId) -> CancelKey:
        return cls(grant, session, json.dumps(request_id))


def request_id_of(message: Any) -> RequestId | None:
    """The id of a JSON-RPC request (a message with a `method` and an id), else None."""
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return None
    return _an_id(message.get("id"))


def cancelled_id_of(message: Any) -> RequestId | None:
    """The request a `notifications/cancelled` names, else None (any other message)."""
    if not isinstance(message, dict) or message.get("method") != "notifications/cancelled":
        return None
    if "id" in message:
        return None  # a request of that name is not the notification
    params = message.get("params")
    return _an_id(params.get("requestId")) if isinstance(params, dict) else None


def _an_id(value: object) -> RequestId | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return value


class SharedCancels:
    """The in-flight requests of this front end and the Redis channel of cancels.

    Args:
        table: The session table in Redis (its keys, scripts and errors are those here).
        timeout_s: Connect timeout of the listener (which then waits without one).
    """

    def __init__(self, table: RedisSessionTable, *, timeout_s: float = 2.0) -> None:
        self._table = table
        self._channel = f"{table.prefix}cancels"
        self._timeout_s = timeout_s
        self._admit = table.script(_ADMIT)
        self._cancel = table.script(_CANCEL)
        self._end_session = table.script(_END_SESSION)
        self._held: dict[CancelKey, list[anyio.CancelScope]] = {}

    def _cancelled_key(self, grant: str, session: str) -> str:
        return f"{self._table.prefix}cancelled:{grant}:{session}"

    def _keys(self, key: CancelKey) -> list[str]:
        own = self._cancelled_key(key.grant, key.session)
        return [*self._table.session_keys(key.grant, key.session), own]

    @contextlib.contextmanager
    def holding(self, key: CancelKey) -> Iterator[anyio.CancelScope]:
        """Hold a request here while it is admitted and runs: the scope to run it in, which a
        cancel of `key` cancels (even one that comes before the scope is entered)."""
        scope = anyio.CancelScope()
        self._held.setdefault(key, []).append(scope)
        try:
            yield scope
        finally:
            held = self._held.get(key, [])
            if scope in held:
                held.remove(scope)
            if not held:
                self._held.pop(key, None)

    def cancel_here(self, key: CancelKey) -> int:
        """Cancel the requests this front end holds under `key`; how many there were."""
        held = self._held.get(key, [])
        for scope in held:
            scope.cancel()
        return len(held)

    def cancel_session_here(self, grant: str, session: str) -> int:
        """Cancel every request of `grant`'s session `session` this front end holds; how many."""
        mine = [key for key in self._held if (key.grant, key.session) == (grant, session)]
        return sum(self.cancel_here(key) for key in mine)

    async def end_session(self, grant: str, session: str) -> bool:
        """End `grant`'s session `session` in the table and cancel its in-flight requests on
        every front end; False when the grant holds no such session (nothing changes then).

        The key goes in the same script that publishes the cancel, so a request of the session
        is either held somewhere when the cancel is heard, or is refused at its admission.

        Raises:
            SessionStoreUnavailable: Redis cannot be reached (nothing is cancelled then).
        """
        keys = [*self._table.session_keys(grant, session), self._cancelled_key(grant, session)]
        payload = json.dumps([grant, session, None])
        ended = await self._table.run_script(
            self._end_session, keys, [grant, session, self._channel, payload]
        )
        if ended:
            self.cancel_session_here(grant, session)
        return bool(ended)

    async def admit(self, key: CancelKey, *, idle_s: float) -> Admission:
        """Whether the request may run: its session is open (its idle time starts again) and
        no cancel of it came first.

        Raises:
            SessionStoreUnavailable: Redis cannot be reached.
        """
        found = await self._script(self._admit, key, [_ttl_ms(idle_s)])
        return "not_found" if found == 0 else "cancelled" if found == 2 else "open"

    async def cancel(self, key: CancelKey, *, idle_s: float) -> bool:
        """Cancel the request `key` wherever it runs (or, not come yet, before it runs); False
        when `key.grant` holds no open session `key.session` (nothing changes then).

        Raises:
            SessionStoreUnavailable: Redis cannot be reached (this front end's own request
                under `key`, if any, is cancelled all the same).
        """
        # First here: the grant is part of the key, so this only ever ends the grant's own.
        self.cancel_here(key)
        payload = json.dumps([key.grant, key.session, key.request])
        args = [_ttl_ms(idle_s), CANCELS_KEPT, _ttl_ms(EARLY_CANCEL_TTL_S), self._channel]
        return bool(await self._script(self._cancel, key, [*args, payload]))

    async def _script(self, script: Any, key: CancelKey, args: list[Any]) -> int:
        grant_args = [key.grant, args[0], key.session, key.request, *args[1:]]
        return await self._table.run_script(script, self._keys(key), grant_args)

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Cancel this front end's requests named on the channel while inside (or until the
        `stop` it gives is awaited: the app's shutdown, before its last message)."""
        listener = asyncio.create_task(self._listen())

        async def stop() -> None:
            listener.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({listener})

        try:
            yield stop
        finally:
            await stop()

    async def _listen(self) -> None:
        import redis
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(
            self._table.url,
            socket_connect_timeout=self._timeout_s,
            health_check_interval=HEALTH_CHECK_S,
        )
        retry_s = LISTEN_RETRY_S[0]
        try:
            while True:
                try:
                    async with client.pubsub() as pubsub:
                        await pubsub.subscribe(self._channel)
                        retry_s = LISTEN_RETRY_S[0]
                        while True:
                            note = await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=None
                            )
                            if note is not None:
                                self._heard(note.get("data"))
                except (redis.RedisError, OSError) as exc:
                    logger.warning(
                        "cancels from other front ends are not heard (%s: %s); subscribing "
                        "again in %.1f s",
                        self._table.url,
                        exc,
                        retry_s,
                    )
                    await asyncio.sleep(retry_s)
                    retry_s = min(retry_s * 2, LISTEN_RETRY_S[1])
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def _heard(self, data: object) -> None:
        try:
            grant, session, request = json.loads(data)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            logger.warning("ignored a malformed cancel on %s: %r", self._channel, data)
            return
        if not (isinstance(grant, str) and isinstance(session, str)):
            logger.warning("ignored a malformed cancel on %s: %r", self._channel, data)
        elif request is None:  # the session ended: all its calls
            self.cancel_session_here(grant, session)
        elif isinstance(request, str):
            self.cancel_here(CancelKey(grant, session, request))


async def accepted(send: Send) -> None:
    """202: a notification taken."""
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def no_answer(send: Send, *, started: bool) -> None:
    """End the event stream of a cancelled request without a message (MCP: no response to a
    cancelled request), as the stream of a cancel in memory mode ends."""
    if not started:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _ttl_ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)
