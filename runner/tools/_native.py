"""sandgate's own tool, `run_code`: structured results, named sessions, files, stdin, limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sandboxes import Program

from .._errors import ArgumentError
from . import _paths
from ._arguments import RunCodeArgs, as_float
from ._context import Caller, ToolContext
from ._outcome import Outcome


async def run_code(
    ctx: ToolContext, args: RunCodeArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    session = ctx.session_of(caller, args.session)
    files = session.workspace.files
    to_write: list[tuple[str, str]] = []
    for name, text in (args.files or {}).items():
        rel = _paths.check_file_name(name, argument=f"files.{name}", suffix="")
        _paths.refuse_links(files, rel, argument=f"files.{name}")
        to_write.append((rel, text))

    def write() -> None:
        for rel, text in to_write:
            _paths.write_text(files, rel, text)

    stdin = (args.stdin or "").encode("utf-8")
    program = Program("code", args.code, None, stdin)
    timeout = None if args.timeout_s is None else as_float(args.timeout_s)
    if timeout is not None and timeout <= 0:
        raise ArgumentError("timeout_s", "a number of seconds above 0", repr(args.timeout_s))
    if args.memory_mb is not None and args.memory_mb <= 0:
        raise ArgumentError("memory_mb", "a whole number of MiB above 0", repr(args.memory_mb))
    memory = None if args.memory_mb is None else args.memory_mb * 1024 * 1024
    return await ctx.run_program(
        "run_code",
        raw,
        caller,
        session,
        program,
        requested_timeout_s=timeout,
        requested_memory_bytes=memory,
        before_run=lambda: write(),
    )
