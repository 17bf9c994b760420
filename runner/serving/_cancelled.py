"""No answer for a cancelled request over streamable HTTP, and no run for one cancelled early.

MCP says the receiver of `notifications/cancelled` should not respond to the cancelled request.
The SDK's dispatcher writes nothing for it, and stdio sends nothing. Its 2025-era streamable
HTTP transport, though, ends the request's event stream with a JSON-RPC error
(`REQUEST_CANCELLED`, -32800, "Request cancelled") from a private hook of the transport, which
no server option turns off. `SilentCancels` drops that one event on its way to the wire, so
the stream of a cancelled request ends without a message for its id (the SDK's client then
settles the abandoned request locally, as for any stream that ends early).

Over HTTP a request and its `notifications/cancelled` come in two POSTs, and a client that
cancels at once (the TypeScript SDK aborting a call a few ms after sending it) can have its
cancel reach the dispatcher first: the SDK drops a cancel for an id not in flight, and the
request then runs to its end and is answered. `EarlyCancels` (server middleware) remembers the
ids a connection cancelled; a request that comes after its own cancel is not run, and its
`REQUEST_CANCELLED` error is the one `SilentCancels` keeps off the wire.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.streamable_http import REQUEST_CANCELLED
from mcp.shared.exceptions import MCPError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CANCELS_KEPT = 256
"""Cancelled request ids remembered per connection (ids are never reused within one)."""
CONNECTIONS_KEPT = 1024
"""Connections whose cancelled ids are remembered (the least recently cancelling go first)."""

_EVENT_END = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")
"""Server-sent events end with an empty line (any of the three line ends)."""


def _is_cancel_answer(event: bytes) -> bool:
    """Whether one server-sent event carries the transport's answer to a cancelled request."""
    data = b"".join(
        line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")
    )
    try:
        message: Any = json.loads(data)
    except ValueError:
        return False
    return (
        isinstance(message, dict)
        and isinstance(message.get("error"), dict)
        and message["error"].get("code") == REQUEST_CANCELLED
        and "result" not in message
    )


def without_cancel_answers(body: bytes) -> bytes:
    """`body` (whole server-sent events) less the events that answer a cancelled request."""
    parts = _EVENT_END.split(body)
    kept: list[bytes] = []
    for index in range(0, len(parts), 2):
        event = parts[index]
        end = parts[index + 1] if index + 1 < len(parts) else b""
        if event and _is_cancel_answer(event):
            continue
        kept.append(event + end)
    return b"".join(kept)


class SilentCancels:
    """ASGI middleware: event streams of cancelled requests end without an answer."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self._app(scope, receive, send)
            return
        events = False

        async def filtered(message: Message) -> None:
            nonlocal events
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or ())
                events = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif events and message["type"] == "http.response.body":
                body = message.get("body", b"")
                if str(REQUEST_CANCELLED).encode() in body:
                    kept = without_cancel_answers(body)
                    if not kept and message.get("more_body", False):
                        return
                    message = {**message, "body": kept}
            await send(message)

        await self._app(scope, receive, filtered)


class EarlyCancels:
    """Server middleware: a request whose `notifications/cancelled` came first is not run.

    Args:
        connection: The connection (MCP session) a message belongs to: request ids are
            unique within one. (The SDK's `ctx.session` is not: it is made per HTTP request.)
    """

    def __init__(self, connection: Callable[[ServerRequestContext[Any, Any]], str]) -> None:
        self._connection = connection
        self._cancelled: OrderedDict[str, deque[str | int]] = OrderedDict()

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method == "notifications/cancelled":
            rid = (ctx.params or {}).get("requestId")
            if isinstance(rid, str | int) and not isinstance(rid, bool):
                key = self._connection(ctx)
                kept = self._cancelled.pop(key, None) or deque(maxlen=CANCELS_KEPT)
                kept.append(rid)
                self._cancelled[key] = kept
                while len(self._cancelled) > CONNECTIONS_KEPT:
                    self._cancelled.popitem(last=False)
        elif ctx.request_id is not None and self._was_cancelled(ctx, ctx.request_id):
            raise MCPError(REQUEST_CANCELLED, "Request cancelled")
        return await call_next(ctx)

    def _was_cancelled(self, ctx: ServerRequestContext[Any, Any], rid: str | int) -> bool:
        return bool(self._cancelled) and rid in self._cancelled.get(self._connection(ctx), ())
