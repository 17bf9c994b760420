"""sandgate's guest side of egress: a proxy refusal becomes `PermissionError` in the code.

Runs inside every guest that may reach the policy's egress proxy (the container engine's
interpreter server imports it from /opt/sandgate; the wasm guests copy its text). Stdlib only,
for CPython 3.11 to 3.15; it imports nothing costly until the code does (`install` only wraps
two methods of `http.client` and watches for `urllib.request` and `requests` being imported).

The proxy refuses a connection with an answer carrying the `Sandgate-Refused` header, whose
text says which rule refused which host. Whichever client the code uses, that answer raises
`PermissionError(<the header's text>)` (marked `sandgate_refused`, so the guest's traceback
shows the code's frames only):

- a refused `CONNECT` (HTTPS through the proxy): read where `http.client` (and urllib3, which
  uses its response class) reads the tunnel's status line (`HTTPResponse._read_status`
  called outside `begin`: only a tunnel does that);
- a refused plain-HTTP request (or a request inside an intercepted tunnel): on the response's
  headers (`HTTPResponse.begin`);
- `urllib.request.urlopen` would wrap the first in `URLError`, and `requests` both in its own
  errors: their entry points re-raise the refusal itself (pip's vendored `requests` too, so a
  refused index ends `pip install` with the refusal, not "no matching distribution").

The forwarder (`serve_forwarder`) is the container engine's: a thread in the interpreter
server relaying every connection to 127.0.0.1:PORT inside the sandbox to the proxy's Unix
socket, which the engine bind-mounts only into containers of egress runs.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not `typing`'s: every interpreter of an egress guest imports this module
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

REFUSAL_HEADER = "Sandgate-Refused"
"""The header of a proxy answer that refuses a connection (`sandboxes._types.REFUSAL_HEADER`)."""
ENVIRONMENT_FLAG = "SANDGATE_EGRESS"
"""Set to "1" in an egress run's environment: every interpreter it starts (`pip`, a
subprocess) installs the refusal hooks as it starts (`autoinstall`, from a `.pth` file)."""
_MAX_HEADER_LINES = 100
_WATCHED = {
    "urllib.request": "_patch_urllib",
    "requests.adapters": "_patch_requests",
    "pip._vendor.requests.adapters": "_patch_requests",
}
"""Modules whose entry points unwrap a refusal, patched as the code imports them."""


def refused(text: str) -> PermissionError:
    """The exception a refusal raises in the code: `PermissionError(text)`, marked."""
    exc = PermissionError(text)
    exc.sandgate_refused = True  # type: ignore[attr-defined]
    return exc


def refusal_in(exc: BaseException) -> BaseException | None:
    """The refusal `exc` is, or wraps (as a cause, a context, urllib's `reason`, urllib3's
    `reason`/`original_error`, or an argument); None when it wraps none."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if getattr(item, "sandgate_refused", False):
            return item
        todo.extend((item.__cause__, item.__context__))
        todo.extend(getattr(item, name, None) for name in ("reason", "original_error"))
        todo.extend(arg for arg in item.args if isinstance(arg, BaseException))
    return None


def autoinstall() -> None:
    """`install` when this interpreter runs for an egress run (`ENVIRONMENT_FLAG`); the image's
    `sandgate-egress.pth` calls it as every interpreter starts, so subprocesses (`pip`) raise
    refusals too."""
    import os

    if os.environ.get(ENVIRONMENT_FLAG) == "1":
        install()


def install() -> None:
    """Make proxy refusals raise `PermissionError` in this interpreter (idempotent)."""
    import http.client

    response = http.client.HTTPResponse
    if getattr(response, "_sandgate_egress", False):
        return
    read_status, begin = response._read_status, response.begin  # type: ignore[attr-defined]

    def _read_status(self: http.client.HTTPResponse) -> tuple[str, int, str]:
        version, status, reason = read_status(self)
        tunnel = not getattr(self, "_sandgate_begun", False)
        if tunnel and status != 200:
            # A tunnel's status is read without `begin` (http.client's and urllib3's
            # `_tunnel` alike); refused, its headers say why (the client would drop them).
            headers = http.client.parse_headers(self.fp)
            text = headers.get(REFUSAL_HEADER)
            if text:
                raise refused(text)
            # The headers are read: fail as the client would have (its own words).
            raise OSError(f"Tunnel connection failed: {status} {reason.strip()}")
        return version, status, reason

    def _begin(self: http.client.HTTPResponse) -> None:
        self._sandgate_begun = True  # type: ignore[attr-defined]
        begin(self)
        text = self.headers.get(REFUSAL_HEADER) if self.headers is not None else None
        if text:
            self.close()
            raise refused(text)

    response._read_status = _read_status  # type: ignore[attr-defined]
    response.begin = _begin  # type: ignore[method-assign]
    response._sandgate_egress = True  # type: ignore[attr-defined]
    for name, patch in _WATCHED.items():
        if name in sys.modules:
            globals()[patch](sys.modules[name])
    if not any(isinstance(finder, _Watcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Watcher())


def forget_proxies() -> None:
    """Drop what clients cached of the previous run's proxy settings (urlopen's default opener
    read `HTTP_PROXY` when it was made): a persistent session's next run brings another
    lease."""
    request = sys.modules.get("urllib.request")
    if request is not None:
        request._opener = None  # type: ignore[attr-defined]


def _unwrapping(call: Callable[..., Any]) -> Callable[..., Any]:
    """`call`, re-raising a refusal it wraps as the refusal itself, without the frames of the
    library that wrapped it."""

    def unwrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            found = refusal_in(exc)
            if found is None:
                raise
        raise refused(str(found)) from None

    unwrapped.__wrapped__ = call  # type: ignore[attr-defined]
    unwrapped._sandgate_egress = True  # type: ignore[attr-defined]
    return unwrapped


def _patch_urllib(module: ModuleType) -> None:
    handler = module.AbstractHTTPHandler
    if not getattr(handler.do_open, "_sandgate_egress", False):
        handler.do_open = _unwrapping(handler.do_open)


def _patch_requests(module: ModuleType) -> None:
    adapter = module.HTTPAdapter
    if not getattr(adapter.send, "_sandgate_egress", False):
        adapter.send = _unwrapping(adapter.send)


class _Watcher:
    """A meta-path finder that patches a watched module once the code imports it."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: ModuleSpec | None = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Patching(spec.loader, _WATCHED[name])  # type: ignore[assignment]
                return spec
        return None


class _Patching:
    """A loader that runs the module's own loader, then patches the module."""

    def __init__(self, loader: Any, patch: str) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        globals()[self._patch](module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


# ---- the container engine's forwarder -------------------------------------------------------

FORWARD_CHUNK_BYTES = 64 * 1024
UNREACHABLE = (
    b"HTTP/1.1 502 sandgate egress proxy unreachable\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)
"""The forwarder's answer when the proxy's socket does not answer (the server stopped it)."""


def serve_forwarder(socket_path: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """Listen on `host:port` (the sandbox's own loopback) and relay each connection to the Unix
    socket `socket_path`, in daemon threads; returns the listening socket. Whatever a client
    sends goes to that one socket: nothing it says chooses another destination."""
    import contextlib
    import socket
    import threading

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(FORWARD_CHUNK_BYTES)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)

    def relay(client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(socket_path)
        except OSError:  # the proxy is gone: say so rather than hang up without a word
            with contextlib.suppress(OSError):
                client.sendall(UNREACHABLE)
            client.close()
            upstream.close()
            return
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=relay, args=(client,), name="egress", daemon=True).start()

    threading.Thread(target=accept, name="egress-forwarder", daemon=True).start()
    return listener
