"""The stdio wire served on the event loop (`runner/serving/_pipes.py`): lines read as a text
file reads them, answers all written, stray prints kept off the wire, the wire's flags kept."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import subprocess
import sys
import textwrap

import pytest

from runner.serving._pipes import PipeLines, PipeWriter, is_pipe

pytestmark = pytest.mark.anyio

WIRE = (
    b'{"a":1}\n'
    b'{"b":"\xc3\xa9\xe2\x82\xac"}\r\n'  # multi-byte characters, a CRLF line end
    b"\xff\xfe not utf-8\n"
    b"\n"
    b"old mac\rline\n"
    + b"x" * 200_000  # longer than a read chunk, split across several
    + b"\nlast line, no newline"
)


def _as_text_file_reads(data: bytes) -> list[str]:
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")
    return list(iter(text.readline, ""))


async def _read_all(data: bytes, split_at: tuple[int, ...]) -> list[str]:
    read_end, write_end = os.pipe()
    flags = fcntl.fcntl(read_end, fcntl.F_GETFL)
    lines = await PipeLines.open(read_end)
    try:

        async def feed() -> None:
            writer = await PipeWriter.open(write_end)
            begin = 0
            for end in (*split_at, len(data)):
                writer._writer.write(data[begin:end])  # bytes as a client sends them
                await writer._writer.drain()
                begin = end
            await writer.aclose()
            os.close(write_end)

        feeding = asyncio.create_task(feed())
        got = []
        async with asyncio.timeout(30):
            while line := await lines.readline():
                got.append(line)
            await feeding
        return got
    finally:
        lines.close()
        assert fcntl.fcntl(read_end, fcntl.F_GETFL) == flags
        os.close(read_end)


@pytest.mark.parametrize(
    "split_at",
    [(), (9, 10, 11, 12), (WIRE.index(b"\r\n") + 1,), (WIRE.index(b"\xc3") + 1, 40_000)],
    ids=["whole", "byte-by-byte", "between-cr-and-lf", "inside-a-character"],
)
async def test_lines_are_those_a_text_file_gives(split_at: tuple[int, ...]) -> None:
    assert await _read_all(WIRE, split_at) == _as_text_file_reads(WIRE)


async def test_an_empty_wire_ends_at_once() -> None:
    assert await _read_all(b"", ()) == []


async def test_the_writer_sends_everything_before_it_closes_and_keeps_the_flags() -> None:
    read_end, write_end = os.pipe()
    flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
    writer = await PipeWriter.open(write_end)
    got = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 1 << 16):
            got.extend(chunk)

    reading = asyncio.create_task(asyncio.to_thread(drain))
    message = "é" * 100_000 + "\n"  # past the pipe's buffer: some of it waits in the transport
    for _ in range(5):
        await writer.write(message)
        await writer.flush()
    await writer.aclose()
    assert fcntl.fcntl(write_end, fcntl.F_GETFL) == flags
    os.close(write_end)
    async with asyncio.timeout(30):
        await reading
    os.close(read_end)
    assert got.decode("utf-8") == message * 5


def test_only_pipes_and_sockets_are_served_on_the_loop() -> None:
    read_end, write_end = os.pipe()
    with open(os.devnull, "rb") as null:
        assert is_pipe(read_end) and is_pipe(write_end) and not is_pipe(null.fileno())
    os.close(read_end)
    os.close(write_end)


SERVER = textwrap.dedent(
    """
    import anyio, os, sys
    import mcp_types as types
    from mcp.shared.message import SessionMessage
    from runner.serving._stdio import stdio_streams

    async def main():
        async with stdio_streams() as (read, write):
            print("stray print")
            sys.stdout.flush()
            os.system("echo stray child")
            incoming = await read.receive()
            request = incoming.message
            answer = types.JSONRPCResponse(jsonrpc="2.0", id=request.id, result={"ok": True})
            await write.send(SessionMessage(answer))
            await write.aclose()  # as the server does when it ends

    anyio.run(main)
    """
)


def test_the_wire_carries_only_messages_and_stray_output_goes_to_stderr() -> None:
    request = b'{"jsonrpc":"2.0","id":7,"method":"ping"}\n'
    done = subprocess.run(
        [sys.executable, "-c", SERVER],
        input=request,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == b'{"jsonrpc":"2.0","id":7,"result":{"ok":true}}\n'
    assert b"stray print" in done.stderr and b"stray child" in done.stderr
