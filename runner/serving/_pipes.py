"""The stdio wire's pipes read and written on the event loop, with no thread hop per message.

A line read through a worker thread (`anyio.to_thread`) and an answer written and flushed
through two more cost three thread hand-offs per call, a third of what the stdio transport
spends. When the wire is a pipe or a socket (what an MCP client starts a server with), both
directions are served by the loop's own non-blocking transports instead; anything else (a
regular file, a terminal) keeps the threads. Each descriptor's flags are put back on close, as
the wire is the client's.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import io
import os
import stat
import sys

READ_CHUNK_BYTES = 64 * 1024
"""Bytes asked of the pipe at a time; the next chunk is read only once its lines are taken,
so a client that writes faster than the server reads waits on its pipe (as with a thread)."""
CLOSE_TIMEOUT_S = 5.0
"""Longest wait, at the end, for answers still buffered to reach a client that reads slowly."""


def is_pipe(fd: int) -> bool:
    """Whether `fd` is a pipe or a socket (what the loop can watch without a thread)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class PipeLines:
    """The lines of a pipe, read on the loop: UTF-8 with replacement characters and universal
    newlines, each ending in `\\n` but the last, exactly as `io.TextIOWrapper.readline` gives
    them; `""` at the end. Use `open`."""

    def __init__(self, fd: int, flags: int, reader: asyncio.StreamReader, transport: object):
        self._fd = fd
        self._flags = flags
        self._reader = reader
        self._transport = transport
        self._decoder = io.IncrementalNewlineDecoder(
            codecs.getincrementaldecoder("utf-8")(errors="replace"), translate=True
        )
        self._lines: list[str] = []
        self._partial: list[str] = []
        self._ended = False

    @classmethod
    async def open(cls, fd: int) -> PipeLines:
        """Read `fd` (a pipe or socket; it stays open) on the running loop."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)  # the transport closes its own copy
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
        except BaseException:
            pipe.close()
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            raise
        return cls(fd, flags, reader, transport)

    async def readline(self) -> str:
        """The next line, `""` once the pipe is closed and every line was taken."""
        while not self._lines:
            if self._ended:
                return ""
            chunk = await self._reader.read(READ_CHUNK_BYTES)
            final = not chunk
            text = self._decoder.decode(chunk, final=final)
            self._ended = final
            pieces = text.split("\n")
            if len(pieces) > 1:
                self._partial.append(pieces[0])
                self._lines.append("".join(self._partial) + "\n")
                self._lines.extend(f"{piece}\n" for piece in pieces[1:-1])
                self._partial = [pieces[-1]] if pieces[-1] else []
            elif pieces[0]:
                self._partial.append(pieces[0])
            if final and self._partial:
                self._lines.append("".join(self._partial))
                self._partial = []
            self._lines.reverse()  # taken from the end
        return self._lines.pop()

    def close(self) -> None:
        """Stop reading; the descriptor gets its flags back."""
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags)


class _Flow(asyncio.streams.FlowControlMixin):
    """The write pipe's protocol: `drain` waits while the pipe is full; `closed` is done
    once the transport has let go of the pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


class PipeWriter:
    """Writes text (UTF-8) to a pipe on the loop: what the SDK's stdio transport calls its
    `stdout` (`write`, then `flush`). A write waits only while the pipe is full past the
    transport's high-water mark. Use `open`."""

    def __init__(self, fd: int, flags: int, writer: asyncio.StreamWriter, flow: _Flow) -> None:
        self._fd = fd
        self._flags = flags
        self._writer = writer
        self._flow = flow

    @classmethod
    async def open(cls, fd: int) -> PipeWriter:
        """Write to `fd` (a pipe or socket; it stays open) from the running loop."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(os.dup(fd), "wb", buffering=0)  # the transport closes its own copy
        try:
            transport, flow = await loop.connect_write_pipe(_Flow, pipe)
        except BaseException:
            pipe.close()
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            raise
        return cls(fd, flags, asyncio.StreamWriter(transport, flow, None, loop), flow)

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))
        await self._writer.drain()

    async def flush(self) -> None:
        """Nothing to do: `write` handed the bytes to the pipe (or its transport's buffer)."""

    async def aclose(self) -> None:
        """Send what is still buffered (waiting at most `CLOSE_TIMEOUT_S`), then give the
        descriptor its flags back."""
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._flow.closed), CLOSE_TIMEOUT_S)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags)


async def claim_stdout() -> tuple[PipeWriter, int] | None:
    """The wire's stdout as a `PipeWriter` on a private descriptor, fd 1 pointed at stderr
    meanwhile (a stray print, the server's or a child's, never reaches the wire), and that
    private descriptor (`release_stdout` puts it back); None when stdout is not a pipe or a
    socket behind `sys.stdout` (the SDK's own transport then serves it, in the same way)."""
    try:
        if sys.stdout is None or sys.stdout.fileno() != 1 or not is_pipe(1):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    sys.stdout.flush()
    private = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        writer = await PipeWriter.open(private)
    except BaseException:
        os.close(private)
        raise
    try:
        diversion = os.dup(2)
    except OSError:
        diversion = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(diversion, 1)
    except OSError:  # not diverted: the SDK's transport serves fd 1 in place
        await writer.aclose()
        os.close(private)
        return None
    finally:
        os.close(diversion)
    return writer, private


async def release_stdout(writer: PipeWriter, private: int) -> None:
    """Send what `writer` still holds, then point fd 1 back at the wire."""
    try:
        await writer.aclose()
    finally:
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            os.dup2(private, 1)
            os.close(private)
