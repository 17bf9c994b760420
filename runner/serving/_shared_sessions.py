"""MCP sessions kept in Redis (`server.http_sessions: redis`): any front end serves any.

The SDK runs stateless; `SharedGrantSessions` opens, serves and ends the sessions against the
`RedisSessionTable` every front end shares, and carries cancels (a `notifications/cancelled`,
a `DELETE`) to whichever front end runs the calls through `SharedCancels`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._http_sessions import (
    HTTP_SESSION_PREFIX,
    SESSION_HEADER,
    EndSession,
    Limits,
    json_error,
    session_id_of,
    too_many,
)
from ._server import GRANT_SCOPE_KEY
from ._session_table import RedisSessionTable, SessionStoreUnavailable
from ._shared_cancels import (
    CancelKey,
    SharedCancels,
    accepted,
    cancelled_id_of,
    no_answer,
    request_id_of,
)

logger = logging.getLogger("sandgate.transports")

KEEP_ALIVE_FRACTION = 1 / 3
"""While a request of a shared session runs, its idle time starts again every this fraction of
`server.session_idle_s`, so a call longer than the idle time never lets it expire."""
MIN_KEEP_ALIVE_S = 0.01
"""The shortest interval between two such refreshes (seconds)."""


class SharedGrantSessions:
    """ASGI middleware (inside `BearerGrants`) for `server.http_sessions: redis`: the SDK runs
    stateless and the sessions are ours, in Redis, so any front end accepts any of them.

    A legacy `initialize` without a session id opens one (a random 128-bit id, sent back in
    `Mcp-Session-Id`) if the grant has room across every front end (429 otherwise); a request
    with an id another grant opened, or an unknown or idled-out one, gets 404 as from the SDK;
    a `DELETE` ends the session from any front end: its key, its calls still running on every
    front end (cancelled as by a `notifications/cancelled`), its workspace and interpreters.
    While one of its requests runs, the session does not idle out (its key is refreshed every
    third of `server.session_idle_s`); its idle time counts from the end of its last request.
    A `GET` (the server-initiated SSE stream) is 405: its messages could not follow the
    session to another front end. A `notifications/cancelled` is answered 202 and ends the
    request it names on whichever front end runs it (`SharedCancels`), and only
    a request of the same grant and session.

    Args:
        app: The MCP app (`streamable_http_app(stateless_http=True)`).
        table: The sessions in Redis.
        end_session: Ends a service session (its workspace, its interpreters).
        limits: The per-grant maximum and the idle timeout, read from the policy in force.
        path: The MCP endpoint's path (other routes pass untouched).
        max_body_bytes: The largest request body read to see whether it is an `initialize`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        table: RedisSessionTable,
        end_session: EndSession,
        limits: Limits,
        path: str,
        max_body_bytes: int,
    ) -> None:
        self._app = app
        self._table = table
        self._end_session = end_session
        self._limits = limits
        self._path = path
        self._max_body_bytes = max_body_bytes
        self._cancels = SharedCancels(table)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the app's life: hear the other front ends' cancels
            async with self._cancels.listening() as stop_listening:

                async def shutting_down(message: Message) -> None:
                    if str(message["type"]).startswith("lifespan.shutdown."):
                        await stop_listening()
                    await send(message)

                await self._app(scope, receive, shutting_down)
            return
        grant = scope.get(GRANT_SCOPE_KEY)
        if scope["type"] != "http" or not isinstance(grant, str) or scope["path"] != self._path:
            await self._app(scope, receive, send)
            return
        method, sid = scope["method"], session_id_of(scope)
        try:
            if method == "GET":
                await _no_get_stream(send)
            elif sid is None and method == "POST":
                await self._opening(grant, scope, receive, send)
            elif sid is None:
                await self._app(scope, receive, send)
            elif method == "DELETE":
                await self._delete(grant, sid, send)
            elif method == "POST":
                await self._posted(grant, sid, scope, receive, send)
            elif await self._table.touch(grant, sid, idle_s=self._limits()[1]):
                await self._in_session(grant, sid, scope, receive, send)
            else:
                await _not_found(send)
        except SessionStoreUnavailable as exc:
            await _store_unavailable(send, str(exc))

    async def _posted(
        self, grant: str, sid: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A POST in the session `sid`: a `notifications/cancelled` is carried to the request
        it names, wherever it runs (202 at once); a request runs held by its id, so such a
        cancel ends it; anything else runs as it is."""
        body, replay = await _read_body(receive, self._max_body_bytes)
        message = _json_of(body)
        idle_s = self._limits()[1]
        if (cancelled := cancelled_id_of(message)) is not None:
            key = CancelKey.of(grant, sid, cancelled)
            try:
                known = await self._cancels.cancel(key, idle_s=idle_s)
            except SessionStoreUnavailable as exc:
                logger.warning(
                    "a cancel in MCP session %s reached no other front end: %s", sid, exc
                )
                known = True
            await (accepted(send) if known else _not_found(send))
            return
        if (rid := request_id_of(message)) is None:
            if await self._table.touch(grant, sid, idle_s=idle_s):
                await self._in_session(grant, sid, scope, replay, send)
            else:
                await _not_found(send)
            return
        with self._cancels.holding(CancelKey.of(grant, sid, rid)) as cancel_scope:
            admission = await self._cancels.admit(CancelKey.of(grant, sid, rid), idle_s=idle_s)
            if admission == "not_found":
                await _not_found(send)
            elif admission == "cancelled":
                await no_answer(send, started=False)  # its cancel came first: never run
            else:
                await self._in_session(grant, sid, scope, replay, send, cancel_scope)

    async def _in_session(
        self,
        grant: str,
        sid: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        cancel_scope: anyio.CancelScope | None = None,
    ) -> None:
        """Serve a request of the open session `sid`, which stays open while it runs (other
        front ends see it alive, however long the call) and idles from its end. A request
        cancelled (its `cancel_scope`) ends as on a hang-up, its stream without an answer."""
        refresher = asyncio.create_task(self._keep_alive(grant, sid))
        sent: list[Message] = []

        async def watched(message: Message) -> None:
            sent.append(message)  # before: a send cancelled midway may have gone out
            await send(message)

        try:
            with cancel_scope or anyio.CancelScope():
                await self._app(scope, receive, watched)
            if cancel_scope is not None and cancel_scope.cancelled_caught:
                ended = bool(sent) and sent[-1]["type"] == "http.response.body"
                if not (ended and not sent[-1].get("more_body")):
                    await no_answer(send, started=bool(sent))
        finally:
            refresher.cancel()
            await asyncio.wait({refresher})
        with contextlib.suppress(SessionStoreUnavailable):
            await self._table.touch(grant, sid, idle_s=self._limits()[1])

    async def _keep_alive(self, grant: str, sid: str) -> None:
        """Start `sid`'s idle time again every `KEEP_ALIVE_FRACTION` of it, until cancelled or
        the session is gone (ended through another front end: it is never brought back)."""
        while True:
            idle_s = self._limits()[1]
            await asyncio.sleep(max(idle_s * KEEP_ALIVE_FRACTION, MIN_KEEP_ALIVE_S))
            try:
                if not await self._table.touch(grant, sid, idle_s=idle_s):
                    return
            except SessionStoreUnavailable as exc:  # the next refresh tries again
                logger.warning("could not keep MCP session %s alive: %s", sid, exc)

    async def _delete(self, grant: str, sid: str, send: Send) -> None:
        """End the session: its key, then its calls still running on any front end
        (cancelled, audited `cancelled`), then its workspace and interpreters, all before
        the client hears so (a call racing the DELETE on another front end finds it gone)."""
        if not await self._cancels.end_session(grant, sid):
            await _not_found(send)
            return
        await self._end_session(grant, HTTP_SESSION_PREFIX + sid)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _opening(self, grant: str, scope: Scope, receive: Receive, send: Send) -> None:
        """A POST without a session id: an `initialize` opens one, if the grant has room."""
        body, replay = await _read_body(receive, self._max_body_bytes)
        if not _is_initialize(body):
            await self._app(scope, replay, send)
            return
        most, idle_s = self._limits()
        sid = await self._table.open(grant, most=most, idle_s=idle_s)
        if sid is None:
            await too_many(send, grant, most)
            return
        status: list[int] = []

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
                if message["status"] < 400:
                    headers = [
                        (k, v) for k, v in message.get("headers", ()) if k.lower() != SESSION_HEADER
                    ]
                    message = {**message, "headers": [*headers, (SESSION_HEADER, sid.encode())]}
            await send(message)

        try:
            await self._app(scope, replay, with_id)
        finally:
            if not status or status[0] >= 400:
                await self._table.end(grant, sid)  # no session was opened after all


async def _read_body(receive: Receive, most: int) -> tuple[bytes, Receive]:
    """The request body (its first `most` + 1 bytes at most) and a `receive` that replays it
    before reading on."""
    kept: list[Message] = []
    size = 0
    while size <= most:
        message = await receive()
        kept.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(m.get("body", b"") for m in kept if m["type"] == "http.request")

    async def replay() -> Message:
        return kept.pop(0) if kept else await receive()

    return body, replay


def _json_of(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _is_initialize(body: bytes) -> bool:
    try:
        message = json.loads(body)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("method") == "initialize"


async def _not_found(send: Send) -> None:
    await json_error(send, 404, "Session not found", code=-32600)


async def _no_get_stream(send: Send) -> None:
    await json_error(
        send,
        405,
        "Method Not Allowed: this server keeps MCP sessions in Redis "
        "(server.http_sessions: redis), so it opens no server-initiated GET stream; "
        "send requests with POST",
        code=-32600,
        extra=((b"allow", b"POST, DELETE"),),
    )


async def _store_unavailable(send: Send, detail: str) -> None:
    await json_error(
        send,
        503,
        f"the MCP session store (the Redis at state.url, server.http_sessions: redis) cannot "
        f"be reached ({detail}); retry once it is back",
        code=-32000,
        extra=((b"retry-after", b"5"),),
    )
