"""One sandbox container: launched with its server waiting, used for one run, then removed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._copy import link_tree
from .._errors import EngineCrashed, EngineUnavailable
from ._docker import Attached, ContainerState, Docker
from ._errors import SandboxGone, translate
from ._protocol import Collector, Ended, ProtocolViolation
from ._spec import PROTOCOL, ContainerSpec

RECV_BYTES = 256 * 1024
HELLO_TIMEOUT_S = 60.0
RESTORED_INTO = "sandgate-container"
"""A file naming the container, added to each restored copy of a checkpoint."""
STOP_TIMEOUT_S = 20.0
OOM_SETTLE_S = 3.0
"""How long a container that died by itself of SIGKILL is re-read for an OOM kill: the
runtime may report the kill after the exit (gVisor's shim polls the cgroup). Each read looks at
both the daemon's `OOMKilled` flag and its `oom` events (`Docker.oom_reported`): under load,
dockerd 20.10 was seen to log the event with the exit and never set the flag, so a persistent
gVisor session's memory stop read `killed` however long the flag was waited for."""
OOM_POLL_S = 0.05
_KILLED_EXITS = (137, 128)
"""Exit statuses of a container whose process was SIGKILLed (128: gVisor's shim, when the
host's kill landed on the sentry)."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """What came back from one run, before it is judged.

    Attributes:
        ended: How the exchange ended (see `Ended`).
        collector: The output, the report and the server's own stderr.
        wall_ms: Milliseconds from sending the request to the end.
        state: The container's final state, when it was read (after a kill or a crash).
    """

    ended: Ended
    collector: Collector
    wall_ms: float
    state: ContainerState | None


class Sandbox:
    """A started container whose interpreter server waits for its one request."""

    def __init__(self, docker: Docker, spec: ContainerSpec, cid: str, attached: Attached) -> None:
        self.docker = docker
        self.spec = spec
        self.id = cid
        self._attached = attached
        self.ready_at = time.monotonic()
        self.started_at = time.time()
        """Unix time its start returned (the earliest its events can be asked for)."""

    @classmethod
    async def launch(cls, docker: Docker, spec: ContainerSpec) -> Sandbox:
        """Create, attach, start, and wait for the server's hello. A cancelled launch still
        finishes in the background and removes what it made, so no container leaks.

        Raises:
            EngineUnavailable: the image, runtime or daemon is missing, or the image speaks
                another protocol.
            EngineCrashed: the container did not come up.
        """
        return await _made_even_if_cancelled(cls._make(docker, spec, None))

    @classmethod
    async def restore(cls, docker: Docker, spec: ContainerSpec, checkpoint: Path) -> Sandbox:
        """Create a container for `spec`, attach, and start it from the gVisor checkpoint in
        the folder `checkpoint` (`_saved.py`): its server is already past its hello, waiting
        for a request. Cancelled, it still finishes in the background and removes what it made.

        Raises:
            EngineCrashed: the daemon could not restore it, or it exited at once.
        """
        return await _made_even_if_cancelled(cls._make(docker, spec, checkpoint))

    @classmethod
    async def _make(cls, docker: Docker, spec: ContainerSpec, checkpoint: Path | None) -> Sandbox:
        """Create, attach and start a container (from `checkpoint` when given); whatever
        fails, what was made is removed."""
        cid = await asyncio.to_thread(docker.create, spec)
        attached: Attached | None = None
        try:
            if checkpoint is not None:
                place = await asyncio.to_thread(docker.checkpoint_folder, cid, checkpoint.name)
                await asyncio.to_thread(link_tree, checkpoint, place)
                # dockerd uploads the folder to containerd's content store, keyed by its
                # digest: two restores of one checkpoint at once collide there ("already
                # exists") unless each folder differs. runsc reads only its own files from it.
                await asyncio.to_thread((place / RESTORED_INTO).write_text, cid)
            attached = await asyncio.to_thread(docker.attach, cid)
            if checkpoint is None:
                await asyncio.to_thread(docker.start, cid)
            else:
                await asyncio.to_thread(docker.start_from_checkpoint, cid, checkpoint.name)
            sandbox = cls(docker, spec, cid, attached)
            if checkpoint is None:
                await sandbox._hello()
            elif not sandbox.alive():
                raise EngineCrashed(f"the restored sandbox {cid[:12]} exited at once")
            return sandbox
        except BaseException:
            if attached is not None:
                attached.close()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(docker.remove, cid)
            raise

    async def _hello(self) -> None:
        collector = Collector(cap=0)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                while collector.hello is None:
                    with translate("read a sandbox's hello", where=self.docker.where):
                        data = await loop.sock_recv(self._attached.sock, RECV_BYTES)
                    if not data:
                        break
                    collector.feed(data)
        except (TimeoutError, ProtocolViolation) as exc:
            raise EngineCrashed(
                f"the sandbox {self.id[:12]} did not greet in {HELLO_TIMEOUT_S:g} s: {exc!r}"
            ) from exc
        hello = collector.hello
        if hello is None:
            said = bytes(collector.diagnostics).decode("utf-8", "replace").strip()
            raise EngineCrashed(
                f"the sandbox {self.id[:12]} ({self.spec.image}, {self.spec.runtime}) ended "
                f"before its server started; it said: {said or 'nothing'}"
            )
        if hello.get("protocol") != PROTOCOL:
            raise EngineUnavailable(
                f"the image {self.spec.image} runs interpreter-server protocol "
                f"{hello.get('protocol')!r}, this sandgate speaks {PROTOCOL}; rebuild it with "
                "`sudo bash scripts/docker-setup.sh`"
            )

    def alive(self) -> bool:
        """Whether the attach stream is still open: dockerd closes it as soon as the container
        exits or is removed, and a restarted dockerd has dropped it (costs no daemon call)."""
        try:
            return self._attached.sock.recv(1, socket.MSG_PEEK) != b""
        except (BlockingIOError, InterruptedError):
            return True  # open, nothing to read: the server waits for its request
        except OSError:
            return False

    async def exchange(self, request: bytes, *, deadline_s: float, output_bytes: int) -> Exchange:
        """Send the request and collect the answer; kill the container on the deadline, on the
        output cap, or when the stream breaks (the caller then reads `state`).

        Raises:
            SandboxGone: the container was dead before the request reached it (the code never
                ran; the run may be retried on another container).
            EngineCrashed: the daemon failed while reading the container's state.
        """
        collector = Collector(cap=output_bytes)
        loop = asyncio.get_running_loop()
        sock = self._attached.sock
        if not self.alive():
            raise SandboxGone(self.id, "its attach stream had closed")
        idle_s = time.monotonic() - self.ready_at
        began = time.perf_counter()
        received = 0
        ended: Ended | None = None
        try:
            async with asyncio.timeout(deadline_s):
                await self._send(request)
                while ended is None:
                    with translate("read a sandbox's output", where=self.docker.where):
                        data = await loop.sock_recv(sock, RECV_BYTES)
                    received += len(data)
                    ended = collector.feed(data) if data else "eof"
        except SandboxGone:
            raise
        except TimeoutError:
            ended = "timeout"
        except ProtocolViolation:
            ended = "protocol"
        except EngineCrashed:
            ended = "eof"  # the connection broke: the container is judged by its state
        wall_ms = (time.perf_counter() - began) * 1000
        state = None
        if ended != "reply" or _maybe_oom(collector):
            state = await self.stop(kill=ended != "reply")
            if ended == "eof" or _maybe_oom(collector):  # it died by itself: why?
                state = await self._oom_settled(state)
        if ended == "eof" and received == 0 and state and _exited_before_request(state, idle_s):
            raise SandboxGone(
                self.id,
                f"it exited with status {state.exit_code} {state.lifetime_s:.3f} s after its "
                f"start, and had waited {idle_s:.3f} s for the request",
            )
        return Exchange(ended, collector, wall_ms, state)

    async def _send(self, request: bytes) -> None:
        """Send the request line. A send that fails never delivered its final newline, and the
        server runs nothing before it has read the whole line: the code did not run."""
        loop = asyncio.get_running_loop()
        try:
            with translate("send a request to a sandbox", where=self.docker.where):
                await loop.sock_sendall(self._attached.sock, request)
        except EngineCrashed as exc:
            raise SandboxGone(self.id, f"the request could not be sent: {exc}") from exc

    async def stop(self, *, kill: bool) -> ContainerState:
        """Make sure no process of the container runs, and return its final state."""
        if kill:
            await asyncio.to_thread(self.docker.kill, self.id)
        with contextlib.suppress(EngineCrashed):
            await asyncio.to_thread(self.docker.wait, self.id, timeout_s=STOP_TIMEOUT_S)
        return await asyncio.to_thread(self.docker.state, self.id)

    async def _oom_settled(self, state: ContainerState) -> ContainerState:
        """`state`, with `oom_killed` set once the daemon shows an OOM kill (its flag or its
        `oom` event), re-read for up to `OOM_SETTLE_S` while it shows a SIGKILL without one."""
        deadline = time.monotonic() + OOM_SETTLE_S
        while not state.running and not state.oom_killed and state.exit_code in _KILLED_EXITS:
            if await asyncio.to_thread(self.docker.oom_reported, self.id, since=self.started_at):
                return dataclasses.replace(state, oom_killed=True)
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(OOM_POLL_S)
            state = await asyncio.to_thread(self.docker.state, self.id)
        return state

    async def remove(self) -> None:
        """Close the connection and remove the container (killing it if it still runs)."""
        self._attached.close()
        await asyncio.to_thread(self.docker.remove, self.id)


async def _made_even_if_cancelled(making: Coroutine[Any, Any, Sandbox]) -> Sandbox:
    """Await `making`; if the caller is cancelled, it still finishes in the background and
    the sandbox it made is removed."""
    task = asyncio.ensure_future(making)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_remove_when_made)
        raise


def _remove_when_made(task: asyncio.Future[Sandbox]) -> None:
    """Done-callback of an abandoned launch: remove the container it made, in a thread."""
    if task.cancelled() or task.exception() is not None:
        return
    sandbox = task.result()
    sandbox._attached.close()
    threading.Thread(target=_quietly_remove, args=(sandbox.docker, sandbox.id)).start()


def _quietly_remove(docker: Docker, cid: str) -> None:
    with contextlib.suppress(Exception):
        docker.remove(cid)


def _exited_before_request(state: ContainerState, idle_s: float) -> bool:
    """Whether the container exited before the request was sent: it lived less time (by the
    daemon's clock) than it had waited since its start returned, and its start came earlier
    still. Only durations are compared, never one clock with another."""
    return state.lifetime_s is not None and state.lifetime_s < idle_s


def _maybe_oom(collector: Collector) -> bool:
    """Whether the report leaves room for an OOM kill the container's state would confirm."""
    reply = collector.reply or {}
    return reply.get("signal") == 9 and not reply.get("oom_kills")
