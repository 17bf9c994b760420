"""sandgate's HTTP client for guests without sockets (wasm, Pyodide), run inside the guest.

The host never imports this file. On a run whose plan has egress, the guest's harness asks the
host's relay (`sandboxes._relay`) for this text, runs it as the module `_sandgate_relay` (once per
interpreter) and calls `start(call)`, where `call(frame) -> answer` is the engine's
synchronous way to the host. From then on, in that interpreter:

- `urllib.request.urlopen` (and every opener `build_opener` makes) performs http:// and https://
  requests through the host, with urllib's own handling of status, headers, redirects and
  `HTTPError`: the response is a real `http.client.HTTPResponse` whose body the host streams in
  bounded chunks as it is read;
- `requests`, where it is installed, sends through the same path (`HTTPAdapter.send`);
- `pyodide.http.pyfetch` and `open_url` (Pyodide) do too;
- a connection the egress proxy refuses raises `PermissionError(<its Sandgate-Refused text>)`;
  in a later run without egress every request raises the sandbox's no-network refusal.

Stdlib only, for CPython 3.11 (type checking) to 3.15 (the wasm guest); every import is made
when first needed.
"""

import contextlib
import io
import json
import sys

TYPE_CHECKING = False  # `typing` costs the guest an import; this is its cheap stand-in
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

READ_BYTES = 256 * 1024
"""Body bytes asked of the host per read (it sends at most its own chunk size)."""
_DROPPED = ("transfer-encoding", "connection", "keep-alive")
"""Response headers the guest's parser must not act on: the host has de-chunked the body."""

_call: "Callable[[bytes], bytes] | None" = None


def start(call: "Callable[[bytes], bytes]", *, pyodide: bool = False) -> None:
    """Set this run up: its environment (brokered secrets' placeholders) from the host, and
    every HTTP client through `call` (`install`)."""
    global _call
    _call = call
    answer, _ = ask({"op": "hello"})
    import os

    os.environ.update(answer.get("environment") or {})
    install(call, pyodide=pyodide)


def install(call: "Callable[[bytes], bytes]", *, pyodide: bool = False) -> None:
    """Send this interpreter's HTTP requests through `call` (idempotent; the latest `call`
    serves). `pyodide`: also provide `pyodide.http` (`pyfetch`, `open_url`)."""
    global _call
    _call = call
    _patch_urllib()
    _patch_requests_when_imported()
    if pyodide:
        _provide_pyodide_http()


def ask(header: "dict[str, Any]", body: bytes = b"") -> "tuple[dict[str, Any], bytes]":
    """One frame to the host and its answer (header, bytes).

    Raises:
        PermissionError: the egress proxy refused the connection (its text).
        OSError: the request failed, or the run has no egress (the sandbox's refusal).
    """
    if _call is None:
        raise OSError("sandgate: egress is not set up in this interpreter")
    data = _call(json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + body)
    head, _, rest = bytes(data).partition(b"\n")
    answer = json.loads(head)
    if "refused" in answer:
        if answer.get("no_network"):
            raise OSError(answer["refused"])
        refused = PermissionError(answer["refused"])
        refused.sandgate_refused = True  # type: ignore[attr-defined]  # one line, as no network
        raise refused
    if "error" in answer:
        raise OSError(answer["error"])
    return answer, rest


def request_body(data: object) -> bytes:
    """A request body as bytes, from what urllib, requests or pyfetch accept."""
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    read = getattr(data, "read", None)
    if read is not None:
        whole = read()
        return whole.encode("utf-8") if isinstance(whole, str) else bytes(whole)
    return b"".join(
        part.encode("utf-8") if isinstance(part, str) else bytes(part)
        for part in data  # type: ignore[attr-defined]
    )


class _Body(io.RawIOBase):
    """A response as a byte stream: the head the guest's parser reads, then the body the host
    sends chunk by chunk as it is read."""

    def __init__(self, head: bytes, key: int) -> None:
        self._pending = head
        self._key = key
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "Any") -> int:
        if not self._pending:
            if self._eof:
                return 0
            answer, data = ask(
                {"op": "read", "id": self._key, "size": max(len(buffer), READ_BYTES)}
            )
            if answer.get("eof"):
                self._eof = True
                return 0
            self._pending = data
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed and not self._eof:
            self._eof = True
            with contextlib.suppress(OSError):
                ask({"op": "close", "id": self._key})
        super().close()


class _Socket:
    """What `http.client.HTTPResponse` reads from: one stream."""

    def __init__(self, stream: _Body) -> None:
        self._stream = stream

    def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(self._stream, READ_BYTES)


def open_response(
    method: str,
    url: str,
    headers: "list[tuple[str, str]]",
    body: bytes,
    timeout: object = None,
) -> "Any":
    """Perform a request through the host; its `http.client.HTTPResponse`, head read.

    Raises:
        PermissionError: the egress proxy refused it.
        OSError: it failed (or the run has no egress).
    """
    import http.client

    header: dict[str, Any] = {"op": "open", "method": method, "url": url}
    header["headers"] = [list(h) for h in headers]
    if isinstance(timeout, tuple):  # requests' (connect, read)
        timeout = max((t for t in timeout if isinstance(t, (int, float))), default=None)
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        header["timeout"] = timeout
    answer, _ = ask(header, body)
    lines = [f"HTTP/1.1 {answer['status']} {answer['reason']}"]
    lines += [f"{k}: {v}" for k, v in answer["headers"] if k.lower() not in _DROPPED]
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    response = http.client.HTTPResponse(_Socket(_Body(head, answer["id"])), method=method)  # type: ignore[arg-type]
    response.begin()
    return response


# urllib ------------------------------------------------------------------------------------


def _urllib_open(handler: object, http_class: object, req: "Any", **kwargs: object) -> "Any":
    """`AbstractHTTPHandler.do_open` through the host: urllib's own processors then handle
    the status (`HTTPError`), redirects and cookies."""
    import urllib.error

    headers = dict(req.unredirected_hdrs)
    headers.update({k: v for k, v in req.headers.items() if k not in headers})
    try:
        response = open_response(
            req.get_method(),
            req.full_url,
            list(headers.items()),
            request_body(req.data),
            req.timeout,
        )
    except PermissionError:
        raise
    except OSError as exc:
        raise urllib.error.URLError(exc) from None
    response.url = req.full_url
    response.msg = response.reason
    return response


def _patch_urllib() -> None:
    import urllib.request

    if getattr(urllib.request, "_sandgate_relay", False):
        return
    base = urllib.request.AbstractHTTPHandler
    base.do_open = _urllib_open  # type: ignore[assignment]

    class HTTPSHandler(base):  # type: ignore[misc,valid-type]
        """https:// through the host (which speaks TLS): also where the guest has no `ssl`."""

        handler_order = 499

        def __init__(self, debuglevel: "Any" = None, context: object = None, **kw: object) -> None:
            base.__init__(self, debuglevel or 0)

        def https_open(self, req: "Any") -> "Any":
            return self.do_open(None, req)

        https_request = base.do_request_

    if not hasattr(urllib.request, "HTTPSHandler"):  # no `ssl` in the guest
        urllib.request.HTTPSHandler = HTTPSHandler  # type: ignore[assignment,misc]
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.HTTPSHandler))
    urllib.request._sandgate_relay = True  # type: ignore[attr-defined]


# requests ----------------------------------------------------------------------------------


def _requests_send(
    adapter: "Any",
    request: "Any",
    stream: bool = False,
    timeout: object = None,
    verify: object = True,
    cert: object = None,
    proxies: object = None,
) -> "Any":
    """`requests.adapters.HTTPAdapter.send` through the host."""
    import requests
    from requests.cookies import extract_cookies_to_jar
    from requests.structures import CaseInsensitiveDict
    from requests.utils import get_encoding_from_headers

    headers = list(request.headers.items())
    # The raw body is passed on as it came: ask for it unencoded.
    headers = [(k, "identity" if k.lower() == "accept-encoding" else v) for k, v in headers]
    try:
        raw = open_response(
            request.method, request.url, headers, request_body(request.body), timeout
        )
    except PermissionError:
        raise
    except OSError as exc:
        raise requests.exceptions.ConnectionError(exc, request=request) from None
    raw._original_response = raw
    response = requests.Response()
    response.status_code = raw.status
    response.headers = CaseInsensitiveDict(raw.getheaders())
    response.encoding = get_encoding_from_headers(response.headers)
    response.raw = raw
    response.reason = raw.reason
    response.url = request.url
    response.request = request
    response.connection = adapter
    extract_cookies_to_jar(response.cookies, request, raw)
    return response


def _patch_requests(module: "Any") -> None:
    module.HTTPAdapter.send = _requests_send


class _AfterImport:
    """Patches `requests.adapters` when code imports it (importing it costs the guest ~100 ms,
    so nothing does that ahead)."""

    def find_spec(self, name: str, path: "Any" = None, target: "Any" = None) -> "Any":
        if name != "requests.adapters":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def patched(module: "Any", exec_module: "Any" = exec_module) -> None:
                    exec_module(module)
                    _patch_requests(module)

                spec.loader.exec_module = patched  # type: ignore[method-assign]
                return spec
        return None


def _patch_requests_when_imported() -> None:
    if "requests.adapters" in sys.modules:
        _patch_requests(sys.modules["requests.adapters"])
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


# pyodide.http ------------------------------------------------------------------------------


class FetchResponse:
    """What `pyodide.http.pyfetch` returns: a response, its body read when asked."""

    def __init__(self, url: str, response: "Any") -> None:
        self._response = response
        self.url = url
        self.status = response.status
        self.status_text = response.reason
        self.ok = 200 <= response.status < 300
        self.headers = dict(response.getheaders())
        self.redirected = False
        self.type = "basic"
        self.body_used = False

    async def bytes(self) -> bytes:
        self.body_used = True
        data: bytes = self._response.read()
        self._response.close()
        return data

    async def memoryview(self) -> memoryview:
        return memoryview(await self.bytes())

    async def string(self) -> str:
        return (await self.bytes()).decode("utf-8", "replace")

    async def text(self) -> str:
        return await self.string()

    async def json(self, **kwargs: "Any") -> "Any":
        return json.loads(await self.string(), **kwargs)

    def raise_for_status(self) -> None:
        if not self.ok:
            raise OSError(f"{self.status} {self.status_text} for url: {self.url}")


async def pyfetch(url: str, **kwargs: "Any") -> FetchResponse:
    """`pyodide.http.pyfetch` through the host (`method`, `headers`, `body`)."""
    method = str(kwargs.get("method") or "GET").upper()
    headers = [(str(k), str(v)) for k, v in dict(kwargs.get("headers") or {}).items()]
    return FetchResponse(url, open_response(method, url, headers, request_body(kwargs.get("body"))))


def open_url(url: str) -> io.StringIO:
    """`pyodide.http.open_url` through the host: the body as text."""
    response = open_response("GET", url, [], b"")
    with response:
        return io.StringIO(response.read().decode("utf-8", "replace"))


def _provide_pyodide_http() -> None:
    module = type(sys)("pyodide.http")
    module.__dict__.update(pyfetch=pyfetch, open_url=open_url, FetchResponse=FetchResponse)
    sys.modules["pyodide.http"] = module
    pyodide = sys.modules.get("pyodide")
    if pyodide is not None:
        pyodide.http = module  # type: ignore[attr-defined]
    # urllib3 on Emscripten sends through the browser's `fetch` (`import js`, closed here):
    # requests go through `HTTPAdapter.send` above instead.
    if "urllib3.contrib.emscripten" not in sys.modules:
        stub = type(sys)("urllib3.contrib.emscripten")
        stub.__dict__["inject_into_urllib3"] = lambda: None
        sys.modules["urllib3.contrib.emscripten"] = stub
