"""The host side of the wire: Docker's attach multiplexing and the interpreter server's frames.

The attach stream carries Docker frames (8-byte header: stream id, three zero bytes, a
big-endian length). Inside the container's stdout, the interpreter server writes its own
frames (1 tag byte, 4-byte big-endian length): `H` hello, `O`/`E` the program's stdout and
stderr, `R` the final report. Both decoders are incremental: they take bytes as they arrive
and never hold more than one frame plus the caps the caller enforces.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

DOCKER_HEADER = struct.Struct(">BxxxI")
SERVER_HEADER = struct.Struct(">cI")
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Largest frame accepted from the server; a larger header means a corrupt stream."""
MAX_DIAGNOSTIC_BYTES = 16 * 1024

Ended = Literal["reply", "timeout", "output_limit", "eof", "protocol"]
"""How an exchange ended: the server's report, the host's deadline, the output cap, the
stream closing without a report, or a stream that broke the protocol."""


class ProtocolViolation(Exception):
    """The stream does not follow the framing (a corrupt or forged stream)."""


class DockerDemux:
    """Splits the attach stream into (stream id, payload) pieces: 1 stdout, 2 stderr."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buffer += data
        while len(self._buffer) >= DOCKER_HEADER.size:
            stream, size = DOCKER_HEADER.unpack_from(self._buffer)
            if stream not in (0, 1, 2) or size > MAX_FRAME_BYTES:
                raise ProtocolViolation(f"bad attach frame header (stream {stream}, {size} B)")
            end = DOCKER_HEADER.size + size
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[DOCKER_HEADER.size : end])
            del self._buffer[:end]
            yield stream, payload


class ServerFrames:
    """Splits the server's stdout into (tag, payload) frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bytes]]:
        self._buffer += data
        while len(self._buffer) >= SERVER_HEADER.size:
            tag, size = SERVER_HEADER.unpack_from(self._buffer)
            if tag not in (b"H", b"O", b"E", b"R") or size > MAX_FRAME_BYTES:
                raise ProtocolViolation(f"bad server frame header (tag {tag!r}, {size} B)")
            end = SERVER_HEADER.size + size
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[SERVER_HEADER.size : end])
            del self._buffer[:end]
            yield tag, payload


@dataclass(slots=True)
class Collector:
    """Accumulates one run's output under a per-stream cap, and its report.

    Attributes:
        cap: Most bytes kept per stream (`Limits.output_bytes`).
    """

    cap: int
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    truncated: list[str] = field(default_factory=list)
    reply: dict[str, Any] | None = None
    hello: dict[str, Any] | None = None
    diagnostics: bytearray = field(default_factory=bytearray)
    _demux: DockerDemux = field(default_factory=DockerDemux)
    _frames: ServerFrames = field(default_factory=ServerFrames)

    def feed(self, data: bytes) -> Ended | None:
        """Take bytes from the attach stream; say how the exchange ended, if it did.

        Raises:
            ProtocolViolation: the stream is not framed as expected.
        """
        for stream, payload in self._demux.feed(data):
            if stream != 1:
                room = MAX_DIAGNOSTIC_BYTES - len(self.diagnostics)
                self.diagnostics += payload[: max(0, room)]
                continue
            for tag, body in self._frames.feed(payload):
                ended = self._take(tag, body)
                if ended is not None:
                    return ended
        return None

    def _take(self, tag: bytes, body: bytes) -> Ended | None:
        if tag == b"H":
            self.hello = _json_object(body)
            return None
        if tag == b"R":
            self.reply = _json_object(body)
            return "reply"
        name, sink = ("stdout", self.stdout) if tag == b"O" else ("stderr", self.stderr)
        room = self.cap - len(sink)
        if len(body) > room:
            sink += body[: max(0, room)]
            self.truncated.append(name)
            return "output_limit"
        sink += body
        return None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise ProtocolViolation(f"a server frame is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ProtocolViolation(f"a server frame is JSON {type(value).__name__}, not an object")
    return value


def request_line(
    *,
    kind: str,
    source: str,
    variable: str | None,
    final_expression: bool,
    stdin: bytes,
    output_bytes: int,
    cpu_s: float | None,
    deadline_s: float,
    nproc: int | None,
    fsize_bytes: int | None,
    persistent: bool = False,
    fsize_hard_bytes: int | None = None,
    environment: dict[str, str] | None = None,
) -> bytes:
    """The JSON line a sandbox's server reads on stdin for one run. `persistent`: the server
    keeps its interpreter for the session's next request (protocol 3), whose files may never
    grow past `fsize_hard_bytes` (fixed by its first run). `environment`: variables the run
    alone gets (an egress run's lease; a persistent interpreter drops them after the run)."""
    request: dict[str, object] = {
        "kind": kind,
        "source": source,
        "variable": variable,
        "final_expression": final_expression,
        "stdin": stdin.decode("utf-8", "surrogateescape"),
        "output_bytes": output_bytes,
        "cpu_s": cpu_s,
        "deadline_s": deadline_s,
        "nproc": nproc,
        "fsize_bytes": fsize_bytes,
    }
    if persistent:
        request.update(persistent=True, fsize_hard_bytes=fsize_hard_bytes)
    if environment:
        request.update(environment=environment)
    return json.dumps(request).encode("ascii") + b"\n"
