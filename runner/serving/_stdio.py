"""The stdio transport: the SDK's stdout, our own stdin reader that answers what it cannot parse.

The SDK's stdio transport drops a line it cannot validate, even one that names an id (a
`tools/call` whose `params` is not an object, a request without `"jsonrpc": "2.0"`): the
client then waits for an answer that never comes. Here stdin is read by `_read`, which hands
every valid message to the server and answers an invalid line as JSON-RPC 2.0 says: not JSON →
`Parse error` (id null); an object with a `method` and a usable id → `Invalid Request` with that
id. Anything else (an invalid notification or response) is dropped, as the SDK does. Stdout,
and keeping stray prints off it, stays the SDK's.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from ._pipes import PipeLines, claim_stdout, is_pipe, release_stdout

logger = logging.getLogger("sandgate.stdio")

Incoming = SessionMessage | Exception


def _claim_stdin() -> int:
    """The wire's stdin on a private descriptor; fd 0 then reads the null device, so nothing
    the server starts can read (or steal) the client's messages."""
    private = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    return private


class _NoInput:
    """The SDK transport's stdin: yields nothing, ends when `done` is set."""

    def __init__(self, done: anyio.Event) -> None:
        self._done = done

    def __aiter__(self) -> _NoInput:
        return self

    async def __anext__(self) -> str:
        await self._done.wait()
        raise StopAsyncIteration


def request_id_of(line: str) -> tuple[bool, Any]:
    """Whether an invalid `line` deserves an answer, and the id to answer with.

    (True, None) for text that is not JSON; (True, id) for an object with a `method` and a
    string or integer id; (False, None) for anything else.
    """
    try:
        value = json.loads(line)
    except RecursionError:
        return False, None  # JSON, but nested deeper than it is worth answering
    except ValueError:
        return bool(line.strip()), None
    if not isinstance(value, dict) or "method" not in value:
        return False, None
    rid = value.get("id")
    usable = isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool))
    return usable, rid if usable else None


def _refusal(line: str, exc: Exception) -> types.JSONRPCError | None:
    answer, rid = request_id_of(line)
    if not answer:
        return None
    if rid is None:
        error = types.ErrorData(code=types.PARSE_ERROR, message="Parse error: not JSON")
    else:
        error = types.ErrorData(
            code=types.INVALID_REQUEST,
            message=f"Invalid Request: {_first_problem(exc)}",
        )
    return types.JSONRPCError(jsonrpc="2.0", id=rid, error=error)


def _first_problem(exc: Exception) -> str:
    """Where a request is malformed, in words (no pydantic internals)."""
    if isinstance(exc, ValidationError):
        for problem in exc.errors(include_url=False):
            loc = [str(p) for p in problem["loc"]]
            if loc and loc[0] == "JSONRPCRequest":
                where = ".".join(loc[1:]) or "the message"
                return f"{where}: {problem['msg']}"
    return "not a JSON-RPC 2.0 request (it needs jsonrpc '2.0', a string method, an id)"


async def _read(fd: int, to_server: MemoryObjectSendStream[Incoming], replies: Any) -> None:
    if is_pipe(fd):  # read on the loop (`_pipes.py`), else by a thread
        lines = await PipeLines.open(fd)
        try:
            await _serve_lines(lines.readline, to_server, replies)
        finally:
            lines.close()
        return
    # closefd=False: a reading thread may still block on `fd` when the server stops.
    text = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(fd, "rb", closefd=False)), encoding="utf-8", errors="replace"
    )

    async def readline() -> str:
        return await anyio.to_thread.run_sync(text.readline, abandon_on_cancel=True)

    await _serve_lines(readline, to_server, replies)


async def _serve_lines(
    readline: Callable[[], Awaitable[str]],
    to_server: MemoryObjectSendStream[Incoming],
    replies: Any,
) -> None:
    async with to_server:
        while True:
            line = await readline()
            if not line:
                return
            try:
                message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except Exception as exc:
                refusal = _refusal(line, exc)
                if refusal is None:
                    await to_server.send(exc)  # the server logs it at debug level and drops it
                    continue
                try:
                    await replies.send(SessionMessage(refusal))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                continue
            await to_server.send(SessionMessage(message))


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[MemoryObjectReceiveStream[Incoming], Any]]:
    """The (read, write) streams of this process's stdin and stdout, for `Server.run`."""
    wire = _claim_stdin()
    done = anyio.Event()
    claimed = await claim_stdout()  # None: the SDK claims and writes stdout itself
    stdout = None if claimed is None else cast(Any, claimed[0])
    try:
        async with stdio_server(stdin=cast(Any, _NoInput(done)), stdout=stdout) as (
            _,
            write_stream,
        ):
            send, receive = anyio.create_memory_object_stream[Incoming](0)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_read, wire, send, write_stream)
                try:
                    yield receive, write_stream
                finally:
                    done.set()
                    tasks.cancel_scope.cancel()
    finally:
        if claimed is not None:
            await release_stdout(*claimed)
        with contextlib.suppress(OSError):
            os.dup2(wire, 0)
