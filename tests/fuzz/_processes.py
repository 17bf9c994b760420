"""Real `sandgate serve` processes for the wire-level fuzzing: raw bytes over stdio, raw HTTP.

Every process started here is tracked and ended (terminate, then kill) when its fixture ends,
whatever the test did.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.processes import STOP_TIMEOUT_S, free_port, sandgate_command, serve_http_argv, stop

START_TIMEOUT_S = 120.0


class RawStdio:
    """A `sandgate serve` (stdio) process spoken to in raw bytes; answers are collected by id.

    Args:
        state_dir: The server's state folder.
        policy: The policy file.
        log: Where the server's stderr goes.
    """

    def __init__(self, state_dir: Path, policy: Path, log: Path) -> None:
        self.log = log
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            [
                sandgate_command(),
                "serve",
                "--state-dir",
                str(state_dir),
                "--policy",
                str(policy),
                "--workers",
                "1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._answers: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self._arrived = threading.Condition()
        self.not_json: list[bytes] = []
        self.lines = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next = 0

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._arrived:
                self.lines += 1
                try:
                    message = json.loads(line)
                except ValueError:
                    self.not_json.append(line[:500])
                    message = None
                if isinstance(message, dict):
                    key = json.dumps(message.get("id"), sort_keys=True)
                    self._answers[key].append(message)
                elif message is not None:
                    self.not_json.append(line[:500])
                self._arrived.notify_all()
        with self._arrived:
            self._arrived.notify_all()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def write(self, data: bytes) -> None:
        """Write `data` as it is (the caller adds the newline)."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.write(json.dumps(message).encode() + b"\n")

    def new_id(self) -> str:
        self._next += 1
        return f"fz-{self._next}"

    def answers(self, request_id: Any) -> list[dict[str, Any]]:
        with self._arrived:
            return list(self._answers.get(json.dumps(request_id, sort_keys=True), []))

    def wait_for(self, request_id: Any, *, count: int = 1, timeout_s: float = 60.0) -> list[Any]:
        """The answers to `request_id` once `count` have come; fails after `timeout_s`."""
        key = json.dumps(request_id, sort_keys=True)
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while len(self._answers.get(key, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive:
                    break
                self._arrived.wait(min(left, 1.0))
            found = list(self._answers.get(key, []))
        assert len(found) >= count, (
            f"no answer to request {request_id!r} within {timeout_s} s "
            f"(server alive: {self.alive}); stderr tail: {self.stderr_tail()}"
        )
        return found

    def request(
        self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Send a well-formed request and return its one answer."""
        request_id = self.new_id()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        answer: dict[str, Any] = self.wait_for(request_id, timeout_s=timeout_s)[0]
        return answer

    def initialize(self) -> dict[str, Any]:
        answer = self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "fuzz", "version": "0"},
            },
            timeout_s=START_TIMEOUT_S,
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def stderr_tail(self, size: int = 3000) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.log.read_bytes()[-size:].decode("utf-8", "replace")

    def close(self) -> None:
        try:
            if self.process.stdin is not None and not self.process.stdin.closed:
                self.process.stdin.close()
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            stop(self.process)
            self._reader.join(timeout=STOP_TIMEOUT_S)
            self._stderr.close()


class HttpServer:
    """A `sandgate serve --transport streamable-http` process on a free loopback port."""

    def __init__(self, state_dir: Path, policy: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = log
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            serve_http_argv(self.port, policy=policy, state_dir=state_dir, workers=1),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env={k: v for k, v in os.environ.items() if k != "SANDGATE_TEST_SECRET"},
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited: {self.stderr_tail()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the server did not listen within {START_TIMEOUT_S} s")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr_tail(self, size: int = 3000) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.log.read_bytes()[-size:].decode("utf-8", "replace")

    def close(self) -> None:
        try:
            stop(self.process)
        finally:
            self._stderr.close()
