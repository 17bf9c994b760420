"""The Python Code Runner tools: `run_python_code`, `save_to_file_and_run`,
`run_python_file` and `pip_install_package`, as upstream has them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from policies import ToolCall
from sandboxes import Program

from ..packages import InstallRefused
from . import _paths
from ._arguments import (
    PipInstallPackageArgs,
    RunPythonCodeArgs,
    RunPythonFileArgs,
    SaveToFileAndRunArgs,
)
from ._context import Caller, ToolContext
from ._outcome import Outcome, Told


async def run_python_code(
    ctx: ToolContext, args: RunPythonCodeArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    session = ctx.session_of(caller)
    program = Program("code", args.code, args.variable_to_return)
    return await ctx.run_program("run_python_code", raw, caller, session, program)


async def save_to_file_and_run(
    ctx: ToolContext, args: SaveToFileAndRunArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    def write(files: Path, rel: str) -> Told | None:
        if not args.overwrite and _paths.exists(files, rel):
            return Told(f"File {args.file_name} already exists")
        _paths.write_text(files, rel, args.code)
        return None

    return await _run_workspace_file(
        ctx, "save_to_file_and_run", raw, caller, args.file_name, args.variable_to_return, write
    )


async def run_python_file(
    ctx: ToolContext, args: RunPythonFileArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    def present(files: Path, rel: str) -> Told | None:
        if _paths.exists(files, rel):
            return None
        return Told(
            f"Error running file: [Errno 2] No such file or directory: '{rel}' (the session "
            "workspace has no such file; save it first with save_to_file_and_run)",
            is_error=True,
        )

    return await _run_workspace_file(
        ctx, "run_python_file", raw, caller, args.file_name, args.variable_to_return, present
    )


async def _run_workspace_file(
    ctx: ToolContext,
    tool: str,
    raw: Mapping[str, Any],
    caller: Caller,
    file_name: str,
    variable: str | None,
    before_run: Callable[[Path, str], Told | None],
) -> Outcome:
    """Run a workspace `.py` file (after `before_run`, once the gate allowed the call)."""
    rel = _paths.check_file_name(file_name)
    session = ctx.session_of(caller)
    files = session.workspace.files
    _paths.refuse_links(files, rel)
    program = Program("file", rel, variable)
    return await ctx.run_program(
        tool, raw, caller, session, program, before_run=lambda: before_run(files, rel)
    )


async def pip_install_package(
    ctx: ToolContext, args: PipInstallPackageArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    session = ctx.session_of(caller)
    requested = ctx.installer.parse(args.package_name, argument="package_name")
    call = ToolCall(
        tool="pip_install_package", args=dict(raw), grant=caller.grant, session=session.id
    )
    async with ctx.gated(call, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        try:
            message = await asyncio.to_thread(
                ctx.installer.install,
                requested,
                session.workspace,
                engine=ctx.engine_kind("run_python_code"),
            )
        except InstallRefused as exc:
            ticket.settle("refused", error=str(exc))
            return Told(f"Error installing package {args.package_name}: {exc}", is_error=True)
        ticket.settle("ok")
        return Told(message)
