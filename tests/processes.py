"""Processes the tests start: the installed `sandgate` command, a free loopback port, waiting
for a server to listen, and ending a process whatever state it is in."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 20.0


def sandgate_command() -> str:
    """The installed `sandgate` command (beside this Python, else on PATH)."""
    beside = Path(sys.executable).with_name("sandgate")
    found = str(beside) if beside.exists() else shutil.which("sandgate")
    assert found, "the `sandgate` command is not installed (pip install -e .)"
    return found


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on at `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout_s: float, host: str = LOOPBACK
) -> None:
    """Return once `host:port` accepts a connection; fail if `process` exits first or the
    port is still closed after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the server did not listen on {port} within {timeout_s} s")


def stop(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """End `process`: terminate, then kill if it does not go within `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)


def serve_http_argv(
    port: int, *, policy: Path, state_dir: Path, workers: int, extra: tuple[str, ...] = ()
) -> list[str]:
    """`sandgate serve` over streamable HTTP on the loopback `port`."""
    return [
        sandgate_command(),
        "serve",
        "--transport",
        "streamable-http",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--policy",
        str(policy),
        "--state-dir",
        str(state_dir),
        "--workers",
        str(workers),
        *extra,
    ]


@contextmanager
def serving_http(
    policy: Path,
    state_dir: Path,
    *,
    workers: int,
    extra: tuple[str, ...] = (),
    start_timeout_s: float = 180.0,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `sandgate serve` over streamable HTTP on a free loopback port, once it listens:
    its MCP URL and its process (run with `env`, else this one's), stopped on exit whatever
    happened."""
    port = free_port()
    argv = serve_http_argv(port, policy=policy, state_dir=state_dir, workers=workers, extra=extra)
    process = subprocess.Popen(argv, env=env)
    try:
        wait_for_port(port, process, start_timeout_s)
        yield f"http://{LOOPBACK}:{port}/mcp", process
    finally:
        stop(process)
