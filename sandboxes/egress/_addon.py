"""The mitmdump addon of the egress proxy: asks the sandgate server about every connection.

Runs inside mitmdump, in the egress venv (`sandgate setup egress`), never in the server:
it imports only mitmproxy and the standard library. It decides nothing itself. For every
CONNECT and every request it asks the server, over the control socket named by
`$SANDGATE_EGRESS_CONTROL` (JSON lines), whether this run (its proxy credentials) may reach
`host:port`; the answer carries the one address to connect to (the connection is pinned to it,
TLS SNI and `Host` keep the name), the run's byte budget and the brokered secrets to substitute
for that host. It cuts a response when the budget runs out, and reports each request's bytes.
When the control channel closes (the server went away) mitmdump shuts down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import os
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.connection import Client
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

REFUSAL_HEADER = "Sandgate-Refused"
ASK_TIMEOUT_S = 30.0


class _Control:
    """The JSON-lines channel to the server: `ask` waits for the answer with the same id."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.on_request: Any = None

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self._path, limit=1 << 24)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "re" in message:
                    future = self._waiting.pop(message["re"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif self.on_request is not None:
                    try:
                        await self.on_request(message)
                    except Exception:  # the addon's one boundary: one message, not the proxy
                        logging.getLogger(__name__).exception("sandgate: %s failed", message)
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("sandgate control channel closed"))
            ctx.master.shutdown()

    def tell(self, message: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(json.dumps(message).encode() + b"\n")

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        self.tell({**message, "id": ident})
        return await asyncio.wait_for(future, ASK_TIMEOUT_S)


def _credentials(flow: http.HTTPFlow) -> str | None:
    value = flow.request.headers.get("proxy-authorization", "")
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _refuse(flow: http.HTTPFlow, text: str, reason: str, status: int = 403) -> None:
    flow.response = http.Response.make(
        status,
        f"{text}: {reason}\n".encode(),
        {REFUSAL_HEADER: text, "Content-Type": "text/plain", "Connection": "close"},
    )
    if status == 407:
        flow.response.headers["Proxy-Authenticate"] = 'Basic realm="sandgate egress"'
    # The reason phrase too: a client's CONNECT error shows only the status line.
    flow.response.reason = text


class _Flow:
    """What the addon counts of one request: its run, where it goes, bytes each way."""

    def __init__(self, credentials: str, host: str, port: int, client: str) -> None:
        self.credentials, self.host, self.port, self.client = credentials, host, port, client
        self.up = 0
        self.down = 0
        self.reported_up = 0
        self.reported_down = 0
        self.cut = False
        self.values: list[tuple[str, str]] = []  # (placeholder, value) put in this request
        self.quota_refusal = ""


class SandgateEgress:
    """The addon: asks, pins, counts, substitutes, cuts, reports."""

    def __init__(self) -> None:
        self._control = _Control(os.environ["SANDGATE_EGRESS_CONTROL"])
        self._control.on_request = self._server_request
        self._tunnels: dict[str, str] = {}  # client connection id -> credentials
        # (client, host, port) -> (credentials, the server's allowing answer: its address)
        self._allowed: dict[tuple[str, str, int], tuple[str, dict[str, Any]]] = {}
        self._counted: dict[str, int] = {}  # credentials -> bytes counted by this process
        self._budget: dict[str, int | None] = {}
        self._live: dict[str, _Flow] = {}  # flow id -> counts

    async def running(self) -> None:
        await self._control.connect()
        proxyserver = ctx.master.addons.get("proxyserver")
        host, port = proxyserver.listen_addrs()[0][:2]
        self._control.tell({"op": "hello", "host": host, "port": port, "pid": os.getpid()})

    async def _server_request(self, message: dict[str, Any]) -> None:
        if message.get("op") == "flush":
            credentials = message["credentials"]
            for flow_id, counts in list(self._live.items()):
                if counts.credentials == credentials:
                    self._report(counts)
                    self._live.pop(flow_id, None)
            clients = {c for c, held in self._tunnels.items() if held == credentials}
            for key, (held, _answer) in list(self._allowed.items()):
                if held == credentials:
                    clients.add(key[0])
                    del self._allowed[key]
            for client in clients:  # a released run's connections end, idle ones too
                self._close_client(client)
            self._counted.pop(credentials, None)
            self._budget.pop(credentials, None)
            self._control.tell({"re_flush": message["ident"]})

    async def _decide(
        self, flow: http.HTTPFlow, credentials: str, host: str, port: int
    ) -> dict[str, Any] | None:
        """The server's answer for this run and destination; None after refusing the flow.
        An allowing answer holds for the client connection (the server would repeat it)."""
        key = (flow.client_conn.id, host, port)
        known = self._allowed.get(key)
        if known is not None and known[0] == credentials:
            return known[1]
        try:
            answer = await self._control.ask(
                {
                    "op": "decide",
                    "credentials": credentials,
                    "client": flow.client_conn.id,
                    "host": host,
                    "port": port,
                }
            )
        except (ConnectionError, TimeoutError):
            _refuse(flow, f"egress to {host}:{port} refused", "the server did not answer", 502)
            return None
        if not answer["allowed"]:
            _refuse(flow, answer["refusal"], answer["reason"], answer.get("status", 403))
            return None
        self._allowed[key] = (credentials, answer)
        self._budget[credentials] = answer.get("budget")
        return answer

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        credentials = _credentials(flow)
        host, port = flow.request.host, flow.request.port
        if credentials is None:
            _refuse(flow, f"egress to {host}:{port} refused", "no proxy credentials", 407)
            return
        if await self._decide(flow, credentials, host, port) is not None:
            self._tunnels[flow.client_conn.id] = credentials

    async def request(self, flow: http.HTTPFlow) -> None:
        host, port = flow.request.host, flow.request.port
        if "upgrade" in flow.request.headers:  # the bytes after an upgrade go uncounted
            _refuse(flow, f"egress to {host}:{port} refused", "protocol upgrades are refused")
            return
        credentials = self._tunnels.get(flow.client_conn.id) or _credentials(flow)
        flow.request.headers.pop("proxy-authorization", None)
        if credentials is None:
            _refuse(flow, f"egress to {host}:{port} refused", "no proxy credentials", 407)
            return
        answer = await self._decide(flow, credentials, host, port)
        if answer is None:
            return
        counts = _Flow(credentials, host, port, flow.client_conn.id)
        counts.quota_refusal = answer["quota_refusal"]
        if not self._substitute(flow, answer, counts):
            return
        counts.up = _size(flow.request)
        budget = self._budget.get(credentials)
        counted = self._counted.get(credentials, 0)
        if budget is not None and counted + counts.up > budget:
            _refuse(flow, answer["quota_refusal"], "egress byte quota exhausted")
            return
        self._counted[credentials] = counted + counts.up
        self._live[flow.id] = counts

    def _substitute(self, flow: http.HTTPFlow, answer: dict[str, Any], counts: _Flow) -> bool:
        """Put the secrets this host may receive in place of their placeholders; refuse (and
        return False) a request that carries any other placeholder."""
        placeholders: dict[str, str] = answer.get("placeholders", {})
        if not placeholders:
            return True
        values: dict[str, str] = answer.get("substitute", {})
        body = flow.request.get_content(strict=False) or b""
        carried = [
            p
            for p in placeholders
            if p in flow.request.path
            or any(p in f"{k}: {v}" for k, v in flow.request.headers.items(multi=True))
            or p.encode() in body
        ]
        for placeholder in carried:
            if placeholder not in values:
                _refuse(
                    flow,
                    placeholders[placeholder],
                    "a secret's placeholder to a host it may not reach",
                )
                return False
        for placeholder in carried:
            value = values[placeholder]
            counts.values.append((placeholder, value))
            flow.request.path = flow.request.path.replace(placeholder, value)
            flow.request.headers.fields = tuple(
                (
                    k.replace(placeholder.encode(), value.encode()),
                    v.replace(placeholder.encode(), value.encode()),
                )
                for k, v in flow.request.headers.fields
            )
            if placeholder.encode() in body:
                body = body.replace(placeholder.encode(), value.encode())
                flow.request.content = body
        return True

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """Connect to the address the server decided on, never to a fresh lookup of the name."""
        address = data.server.address
        allowed = self._allowed.get((data.client.id, *address)) if address else None
        if allowed is None:
            data.server.error = "sandgate: no egress decision for this connection"
            return
        data.server.address = (allowed[1]["address"], address[1])

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        counts = self._live.get(flow.id)
        if counts is None or flow.response is None:
            return
        counts.down = len(bytes(flow.response.headers)) + 20
        self._count(counts, counts.down)
        if not counts.values:  # a response to a request carrying a secret is read whole
            flow.response.stream = lambda chunk: self._stream(counts, chunk)

    def _count(self, counts: _Flow, size: int) -> int:
        """Counts `size` more bytes down; returns how many of them the budget lets through."""
        budget = self._budget.get(counts.credentials)
        counted = self._counted.get(counts.credentials, 0)
        allowed = size if budget is None else max(0, min(size, budget - counted))
        self._counted[counts.credentials] = counted + allowed
        return allowed

    def _stream(self, counts: _Flow, chunk: bytes) -> bytes:
        if counts.cut:
            return b""
        allowed = self._count(counts, len(chunk))
        counts.down += allowed
        if allowed < len(chunk):
            counts.cut = True
            asyncio.get_running_loop().call_soon(self._close_client, counts.client)
        return chunk[:allowed]

    def _close_client(self, client_id: str) -> None:
        """Close a client connection now (its handler then ends its server connections)."""
        handler = ctx.master.addons.get("proxyserver").connections.get(client_id)
        if handler is not None and handler.client in handler.transports:
            with contextlib.suppress(KeyError, AssertionError, OSError):  # already closing
                handler.close_connection(handler.client)

    def _report(self, counts: _Flow) -> None:
        self._control.tell(
            {
                "op": "usage",
                "credentials": counts.credentials,
                "client": counts.client,
                "host": counts.host,
                "port": counts.port,
                "up": counts.up - counts.reported_up,
                "down": counts.down - counts.reported_down,
                "cut": counts.cut,
            }
        )
        counts.reported_up, counts.reported_down = counts.up, counts.down

    def response(self, flow: http.HTTPFlow) -> None:
        counts = self._live.pop(flow.id, None)
        if counts is None:
            return
        if counts.values and flow.response is not None:
            self._scrub(flow, counts)
        self._report(counts)

    def _scrub(self, flow: http.HTTPFlow, counts: _Flow) -> None:
        """A response to a request that carried a secret: the value never goes back to the
        code (a host echoing the request gets the placeholder back); counted whole."""
        response = flow.response
        body = response.get_content(strict=False) or b""
        size = len(response.raw_content or b"")
        if self._count(counts, size) < size:
            counts.cut = True
            _refuse(flow, counts.quota_refusal, "egress byte quota exhausted")
            return
        counts.down += size
        for placeholder, value in counts.values:
            body = body.replace(value.encode(), placeholder.encode())
            response.headers.fields = tuple(
                (k, v.replace(value.encode(), placeholder.encode()))
                for k, v in response.headers.fields
            )
        response.content = body

    def error(self, flow: http.HTTPFlow) -> None:
        self.response(flow)

    def tcp_start(self, flow: Any) -> None:
        """Raw TCP inside a tunnel (neither HTTP nor TLS): its bytes would go uncounted."""
        flow.kill()
        self._close_client(flow.client_conn.id)

    def tcp_message(self, flow: Any) -> None:
        """No raw byte passes, whatever reached the TCP layer before it was closed."""
        flow.messages[-1].content = b""

    def client_disconnected(self, client: Client) -> None:
        self._tunnels.pop(client.id, None)
        for key in [key for key in self._allowed if key[0] == client.id]:
            del self._allowed[key]
        for flow_id, counts in list(self._live.items()):
            if counts.client == client.id:
                self._report(counts)
                del self._live[flow_id]


def _size(request: http.Request) -> int:
    line = len(request.method) + len(request.path) + 12
    return line + len(bytes(request.headers)) + len(request.raw_content or b"")


addons = [SandgateEgress()]
