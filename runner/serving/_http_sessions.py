"""MCP sessions over streamable HTTP, bound to the grant that opened them.

Two modes (`server.http_sessions`): `memory` (`GrantSessions` over the SDK's own session
manager, one process, here) and `redis` (`SharedGrantSessions` in `_shared_sessions.py`: the
SDK runs stateless and the sessions live in Redis, so several front ends serve them). What
both modes share (the session header, the 429 and JSON-RPC error answers) is here too.

The SDK's session manager refuses a session id presented with another credential (it answers
404, as for an unknown id) once the request carries an authenticated user: `BearerGrants`
gives every request one, named for its grant. This module adds what the SDK does not know
about: how many HTTP sessions each grant holds (a grant over its share gets 429, the others
still open theirs), and what a client's `DELETE` of its own session ends on our side (its
workspace and its engines' interpreters).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._server import GRANT_SCOPE_KEY

SESSION_HEADER = b"mcp-session-id"
HTTP_SESSION_PREFIX = "http:"
"""A session id as the service knows it: `http:` and the `Mcp-Session-Id`."""

EndSession = Callable[[str, str], Awaitable[object]]
"""Ends a session of the service: (grant, session id)."""
Limits = Callable[[], tuple[int, float]]
"""The limits in force: (sessions one grant may hold, seconds after which an idle one ends)."""


@dataclass(slots=True)
class _Open:
    grant: str
    last_used: float
    in_flight: int = 0


class GrantSessions:
    """ASGI middleware (inside `BearerGrants`): per-grant HTTP session counts and `DELETE`.

    Args:
        app: The MCP app.
        end_session: Ends a service session (its workspace, its interpreters).
        limits: The per-grant maximum and the idle timeout, read from the policy in force.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        end_session: EndSession,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._end_session = end_session
        self._limits = limits
        self._clock = clock
        self._open: dict[str, _Open] = {}

    def held(self, grant: str) -> int:
        """HTTP sessions `grant` holds open now."""
        self._forget_idle()
        return sum(1 for s in self._open.values() if s.grant == grant)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not isinstance(scope.get(GRANT_SCOPE_KEY), str):
            await self._app(scope, receive, send)
            return
        grant: str = scope[GRANT_SCOPE_KEY]
        sid = session_id_of(scope)
        if sid is None:
            await self._opening(grant, scope, receive, send)
            return
        mine = self._open.get(sid)
        if mine is not None and mine.grant != grant:
            mine = None  # another grant's id: the SDK answers 404; nothing here changes
        status: list[int] = []
        if mine is None:
            await self._app(scope, receive, send)
            return
        deleting = scope["method"] == "DELETE"

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            ended = message["type"] == "http.response.body" and not message.get("more_body")
            if deleting and ended and status and status[0] < 300:
                # The session is over before the client hears so: workspace and interpreters.
                self._open.pop(sid, None)
                await self._end_session(grant, HTTP_SESSION_PREFIX + sid)
            await send(message)

        mine.in_flight += 1
        mine.last_used = self._clock()
        try:
            await self._app(scope, receive, answer)
        finally:
            mine.in_flight -= 1
            mine.last_used = self._clock()
        if status and status[0] == 404:
            self._open.pop(sid, None)  # the SDK no longer knows it (it idled out)

    async def _opening(self, grant: str, scope: Scope, receive: Receive, send: Send) -> None:
        """A request without a session id: it may open one, if the grant has room."""
        most, _idle_s = self._limits()
        if scope["method"] == "POST" and self.held(grant) >= most:
            await too_many(send, grant, most)
            return
        opened: list[str] = []
        status: list[int] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", ()):
                    if key.lower() == SESSION_HEADER:
                        opened.append(value.decode("latin-1"))
            await send(message)

        await self._app(scope, receive, _watch(capture, status))
        if opened and status and status[0] < 400:
            self._open[opened[0]] = _Open(grant, self._clock())

    def _forget_idle(self) -> None:
        """Drop sessions the SDK has ended for idleness (no request in flight that long)."""
        _most, idle_s = self._limits()
        cutoff = self._clock() - idle_s
        for sid, held in list(self._open.items()):
            if held.in_flight == 0 and held.last_used < cutoff:
                del self._open[sid]


def session_id_of(scope: Scope) -> str | None:
    """The `Mcp-Session-Id` a request carries, if any."""
    for key, value in scope["headers"]:
        if key.lower() == SESSION_HEADER:
            return str(value.decode("latin-1"))
    return None


def _watch(send: Send, status: list[int]) -> Send:
    async def watched(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))
        await send(message)

    return watched


async def too_many(send: Send, grant: str, most: int) -> None:
    """429: `grant` holds its share of sessions already."""
    detail = (
        f"the client '{grant}' already holds {most} open MCP sessions, the server's maximum per "
        "client (server.max_sessions_per_grant); close one with an HTTP DELETE of its "
        "Mcp-Session-Id, or reuse an open session"
    )
    await json_error(send, 429, detail, code=-32000, extra=((b"retry-after", b"5"),))


async def json_error(
    send: Send, status: int, message: str, *, code: int, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """An HTTP error answer carrying a JSON-RPC error (`id` null)."""
    body = json.dumps(
        {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})
