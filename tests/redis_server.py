"""The one way tests start a real `redis-server`: on a unix socket of its own (or a loopback
TCP port), with or without AOF, stopped or killed and started again (same socket or port, same
AOF folder), and always stopped at the end. Without the binary a test skips, or fails in CI.

`redis_url` is the session-wide server most tests share (import the fixture into a conftest);
`redis_server(folder)` gives a test one it can stop and restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.processes import LOOPBACK, stop

IN_CI = os.environ.get("CI") == "true"
REDIS_START_TIMEOUT_S = 20.0
REDIS_STOP_TIMEOUT_S = 10.0


def redis_binary() -> str:
    """The `redis-server` on PATH; skips the test without it (fails it in CI)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is required in CI; install the redis-server package")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


class RedisServer:
    """One redis-server keeping its files in `folder`.

    Args:
        binary: The `redis-server` executable.
        folder: Its working folder (AOF files, the unix socket).
        port: Listen on this loopback TCP port instead of a unix socket.
        aof: `appendonly yes` with `appendfsync always` (what is acknowledged survives a
            SIGKILL and comes back on the next `start`); False keeps nothing on disk.

    Attributes:
        url: `unix://<folder>/redis.sock`, or `redis://127.0.0.1:<port>/0`.
    """

    def __init__(
        self, binary: str, folder: Path, *, port: int | None = None, aof: bool = True
    ) -> None:
        self._binary = binary
        self._folder = folder
        self._socket = folder / "redis.sock"
        self._port = port
        self._aof = aof
        self.url = f"unix://{self._socket}" if port is None else f"redis://{LOOPBACK}:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        if self._port is None:
            listen = ["--port", "0", "--unixsocket", str(self._socket), "--unixsocketperm", "700"]
        else:
            listen = ["--bind", LOOPBACK, "--port", str(self._port)]
        persist = ["--appendonly", "yes", "--appendfsync", "always"] if self._aof else []
        return [self._binary, *listen, "--save", "", *persist, "--dir", str(self._folder)]

    def start(self) -> None:
        """Start it and return once it answers PING (bounded)."""
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not self._answers():
            assert self._process.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, (
                f"redis-server did not answer PING within {REDIS_START_TIMEOUT_S} s"
            )
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            if self._port is None:
                conn = socket.socket(socket.AF_UNIX)
                conn.settimeout(0.5)
                conn.connect(str(self._socket))
            else:
                conn = socket.create_connection((LOOPBACK, self._port), timeout=0.5)
            with conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it (SIGTERM; its AOF stays for the next `start`)."""
        if self._process is not None:
            stop(self._process, timeout_s=REDIS_STOP_TIMEOUT_S)
            self._process = None

    @contextmanager
    def hung(self) -> Iterator[None]:
        """Stop it answering (SIGSTOP: connections stay open, nothing comes back, as from a
        server stuck in a long command) until the block ends (SIGCONT)."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL it, as a crash would: only what the AOF holds comes back on `start`."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=REDIS_STOP_TIMEOUT_S)
            self._process = None


@contextmanager
def redis_server(
    folder: Path, *, port: int | None = None, aof: bool = True, started: bool = True
) -> Iterator[RedisServer]:
    """A `RedisServer` in `folder` (running unless `started` is False), stopped on exit
    whatever happened."""
    binary = redis_binary()
    folder.mkdir(parents=True, exist_ok=True)
    server = RedisServer(binary, folder, port=port, aof=aof)
    try:
        if started:
            server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real redis-server shared by the session's tests (a unix socket, no port
    races; no AOF), stopped at teardown. Tests keep apart by key prefixes of their own."""
    with redis_server(tmp_path_factory.mktemp("redis"), aof=False) as server:
        yield server.url
