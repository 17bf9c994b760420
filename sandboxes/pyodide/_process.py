"""One jailed Deno process hosting one Pyodide interpreter: spawn, talk to, kill."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

from .._errors import EngineCrashed
from .._relay import Relay, b64_answer
from ._assets import HOST_SCRIPT, Assets, deno_common_flags, deno_environment, find_deno
from ._jail import Cgroup, JailInfo, wrap

MAX_ANSWER_BYTES = 512 * 1024 * 1024
"""Longest protocol line accepted from a guest (output and files it sends back included)."""
STDERR_TAIL_BYTES = 8192
MAX_SAVED_BYTES = 5 * 1024**3
"""Largest part of a saved interpreter accepted (its heap: at most wasm32's 4 GiB)."""
SAVE_CHUNK_BYTES = 4 * 1024 * 1024
SPARSE_BLOCK_BYTES = 4096
_ZERO_BLOCK = bytes(SPARSE_BLOCK_BYTES)
READY_TIMEOUT_S = 120.0
REAP_TIMEOUT_S = 10.0


def _write_sparse(out: BinaryIO, data: bytes) -> None:
    """Write `data` at the file's position, leaving holes for its blocks of zeros (most of a
    wasm heap: a saved interpreter takes about a third of its size on disk)."""
    view = memoryview(data)
    for at in range(0, len(view), SPARSE_BLOCK_BYTES):
        block = view[at : at + SPARSE_BLOCK_BYTES]
        if block == _ZERO_BLOCK[: len(block)]:
            out.seek(len(block), os.SEEK_CUR)
        else:
            out.write(block)


class ProcessDied(EngineCrashed):
    """The Deno process ended while the host waited for it."""


class DenoProcess:
    """A Deno process running `host.mjs serve`; it answers one request at a time.

    Every answer is untrusted: it only counts when it carries the process's token, and the
    engine validates each field before use.
    """

    def __init__(
        self, process: asyncio.subprocess.Process, token: str, cgroup: Cgroup, load_ms: float
    ) -> None:
        self._process = process
        self._token = token.encode("ascii") + b" "
        self.cgroup = cgroup
        self.load_ms = load_ms
        self.stderr_tail: deque[bytes] = deque(maxlen=64)
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self.served = 0
        self._streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cut: set[str] = set()
        self.relay: Relay | None = None
        """The running request's egress relay (`sandboxes._relay`), when it has egress."""

    @classmethod
    async def spawn(
        cls,
        assets: Assets,
        info: JailInfo,
        *,
        js_heap_bytes: int,
        memory_limit_bytes: int,
        harden: bool = True,
        saved: Path | None = None,
    ) -> DenoProcess:
        """Start a jailed Deno, boot Pyodide from the snapshot (or from the interpreter saved
        in the folder `saved`, which it may then read instead) and wait until it is ready.

        Raises:
            ProcessDied: it exited or said nothing sensible before being ready.
        """
        cgroup = Cgroup(info)
        cgroup.set_memory_limit(memory_limit_bytes)
        heap_mb = max(64, js_heap_bytes >> 20)
        command = [
            find_deno(),
            "run",
            *deno_common_flags(),
            "--deny-write",
            f"--allow-read={assets.pyodide_dir},{saved or assets.snapshot}",
            f"--v8-flags=--max-old-space-size={heap_mb}",
            str(HOST_SCRIPT),
            "serve" if saved is None else "resume",
            str(assets.pyodide_dir),
            str(saved or assets.snapshot),
            *([] if harden else ["open"]),
        ]
        began = time.perf_counter()
        try:
            process = await asyncio.create_subprocess_exec(
                *wrap(command, info, cgroup),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=deno_environment(assets),
                cwd=assets.pyodide_dir,
                limit=MAX_ANSWER_BYTES,
                start_new_session=True,
            )
        except OSError as exc:
            cgroup.remove()
            raise ProcessDied(f"could not start Deno: {exc}") from exc
        token = secrets.token_hex(16)
        self = cls(process, token, cgroup, 0.0)
        try:
            self._send_raw(token.encode("ascii") + b"\n")
            ready = await self._answer(READY_TIMEOUT_S)
        except ProcessDied as exc:
            await self.kill()
            raise ProcessDied(f"{exc}: {self.stderr_text().strip()[-600:]}") from exc
        except BaseException:
            await self.kill()
            raise
        if not ready.get("ready"):
            await self.kill()
            raise ProcessDied(f"the Pyodide host did not start: {ready}")
        self.load_ms = (time.perf_counter() - began) * 1000
        return self

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Running: not reaped, and not a zombie the event loop has yet to reap."""
        if self._process.returncode is not None:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def _send_raw(self, data: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(data)

    async def _answer(self, timeout_s: float | None) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    line = await stdout.readline()
                except (ValueError, asyncio.LimitOverrunError) as exc:
                    raise ProcessDied(f"the Pyodide host sent an oversized answer: {exc}") from exc
                if not line:
                    code = await self._process.wait()
                    raise ProcessDied(f"the Pyodide host (pid {self.pid}) ended with {code}")
                if not line.startswith(self._token):
                    continue  # not an answer: something in the guest wrote to fd 1
                try:
                    answer = json.loads(line[len(self._token) :])
                except ValueError:
                    continue
                if not isinstance(answer, dict):
                    continue
                frame = answer.get("egress")
                if isinstance(frame, str):  # the guest waits for the host to perform a request
                    await self._relay(frame)
                    continue
                stream, data = answer.get("stream"), answer.get("data")
                if stream in ("stdout", "stderr") and isinstance(data, str):
                    self._streams[stream].append(data)
                    if answer.get("cut") is True:
                        self._cut.add(stream)
                    continue
                return answer

    async def _relay(self, frame: str) -> None:
        """Answer a guest's egress frame with the run's relay (none: the sandbox's refusal)."""
        relay = self.relay
        if relay is None:
            relay = Relay(None, deadline_s=0.0)
        answer = await asyncio.to_thread(b64_answer, relay, frame)
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(answer.encode("ascii") + b"\n")
        await stdin.drain()

    def clear_output(self) -> None:
        """Forget streamed output (what a guest printed between runs)."""
        self._streams = {"stdout": [], "stderr": []}
        self._cut = set()

    def streams_cut(self) -> tuple[str, ...]:
        """The streams whose output passed the run's cap, as the host said while streaming
        (it forwards only the cap's worth, so a run stopped before its report shows it)."""
        return tuple(sorted(self._cut))

    def take_output(self, stream: str) -> str:
        """What the guest streamed on `stdout`/`stderr` since the last call (then cleared)."""
        text = "".join(self._streams[stream])
        self._streams[stream] = []
        return text

    async def send(self, payload: dict[str, Any]) -> None:
        """Send one request that has no answer (file copies).

        Raises:
            ProcessDied: the process is gone.
        """
        try:
            self._send_raw(json.dumps(payload).encode("utf-8") + b"\n")
            stdin = self._process.stdin
            assert stdin is not None
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            await self._process.wait()
            raise ProcessDied(f"the Pyodide host (pid {self.pid}) is gone: {exc}") from exc

    async def request(self, payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Send one request and wait at most `timeout_s` for its answer.

        Raises:
            ProcessDied: the process ended first (a limit, a crash, or the guest exiting).
            TimeoutError: no answer in time; the caller kills the process.
        """
        try:
            self._send_raw(json.dumps(payload).encode("utf-8") + b"\n")
            stdin = self._process.stdin
            assert stdin is not None
            async with asyncio.timeout(timeout_s):
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            await self._process.wait()
            raise ProcessDied(f"the Pyodide host (pid {self.pid}) is gone: {exc}") from exc
        answer = await self._answer(timeout_s)
        self.served += 1
        return answer

    async def save(self, files: dict[str, Path], *, timeout_s: float) -> dict[str, Any]:
        """Ask the interpreter to save itself: the answer, and when it says `saved`, the bytes
        that follow it written into `files["heap"]` and `files["files"]` (new files).

        Raises:
            ProcessDied: the process ended or sent something else than it announced.
            TimeoutError: it did not finish in time; the stream is then out of step (kill it).
        """
        async with asyncio.timeout(timeout_s):
            answer = await self.request({"op": "save"}, timeout_s=timeout_s)
            if answer.get("saved") is not True:
                return answer
            for name in ("heap", "files"):
                size = answer.get(f"{name}_bytes")
                if not isinstance(size, int) or not 0 < size <= MAX_SAVED_BYTES:
                    raise ProcessDied(f"the Pyodide host announced {size!r} bytes of {name}")
                await self._receive(files[name], size)
        return answer

    async def _receive(self, path: Path, size: int) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        with path.open("xb") as out:
            left = size
            while left:
                try:
                    chunk = await stdout.readexactly(min(left, SAVE_CHUNK_BYTES))
                except asyncio.IncompleteReadError as exc:
                    raise ProcessDied(
                        f"the Pyodide host (pid {self.pid}) ended while saving"
                    ) from exc
                _write_sparse(out, chunk)
                left -= len(chunk)
            out.truncate(size)

    async def _drain_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        with contextlib.suppress(Exception):
            while chunk := await stderr.read(4096):
                self.stderr_tail.append(chunk)

    def stderr_text(self) -> str:
        """The last few KiB Deno wrote to its stderr (crash reasons, Pyodide fatal errors)."""
        return b"".join(self.stderr_tail)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")

    async def wait(self) -> int:
        """Wait for the process to end (and its stderr to be drained)."""
        code = await self._process.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._stderr_task, REAP_TIMEOUT_S)
        return code

    async def kill(self) -> None:
        """Kill the process group, reap it and remove its cgroup."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.wait(), REAP_TIMEOUT_S)
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._stderr_task.cancel()
        self.cgroup.remove()
