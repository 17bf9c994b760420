"""No answer for a cancelled request over streamable HTTP.

MCP says the receiver of `notifications/cancelled` should not respond to the cancelled request.
The SDK's dispatcher writes nothing for it, and stdio sends nothing. Its 2025-era streamable
HTTP transport, though, ends the request's event stream with a JSON-RPC error
(`REQUEST_CANCELLED`, -32800, "Request cancelled") from a private hook of the transport, which
no server option turns off. `SilentCancels` drops that one event on its way to the wire, so
the stream of a cancelled request ends without a message for its id (the SDK's client then
settles the abandoned request locally, as for any stream that ends early).
"""

from __future__ import annotations

import json
import re
from typing import Any

from mcp.server.streamable_http import REQUEST_CANCELLED
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
