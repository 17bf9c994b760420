"""The Mcp Pyodide tools: execute, install packages, mount points, listings and images."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from policies import ToolCall
from sandboxes import HOST_IO, HostIOBusy, HostIOTimeout, MountPathRefused, Program, SandboxError
from sandboxes import list_mounted_directory as list_folder
from sandboxes import read_image as read_image_file

from .._errors import ArgumentError
from .._mounts import MountPoint, find_mount, session_mounts
from ..packages import InstallRefused
from ._arguments import (
    PyodideExecuteArgs,
    PyodideGetMountPointsArgs,
    PyodideInstallPackagesArgs,
    PyodideListMountedDirectoryArgs,
    PyodideReadImageArgs,
    as_float,
)
from ._context import Caller, Ticket, ToolContext
from ._outcome import Outcome, Told

MS_PER_S = 1000.0


def mounts(ctx: ToolContext, caller: Caller) -> list[MountPoint]:
    """The mount points `caller`'s session sees."""
    session = ctx.session_of(caller)
    return session_mounts(session.workspace.files, ctx.operator_mounts)


async def execute(
    ctx: ToolContext, args: PyodideExecuteArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    if not args.timeout > 0:
        raise ArgumentError("timeout", "milliseconds above 0", repr(args.timeout))
    session = ctx.session_of(caller)
    program = Program("code", args.code, final_expression=True)
    return await ctx.run_program(
        "pyodide_execute",
        raw,
        caller,
        session,
        program,
        requested_timeout_s=as_float(args.timeout) / MS_PER_S,
    )


async def install_packages(
    ctx: ToolContext, args: PyodideInstallPackagesArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    requested = ctx.installer.parse_list(args.package, argument="package")
    session = ctx.session_of(caller)
    call = ToolCall(
        tool="pyodide_install-packages", args=dict(raw), grant=caller.grant, session=session.id
    )
    async with ctx.gated(call, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        lines: list[str] = []
        failed = 0
        engine = ctx.engine_kind("pyodide_execute")
        for item in requested:
            try:
                lines.append(
                    await asyncio.to_thread(
                        ctx.installer.install, item, session.workspace, engine=engine
                    )
                )
            except InstallRefused as exc:
                failed += 1
                lines.append(f"Error installing package {item.name}: {exc}")
        if failed:
            ticket.settle("refused", error=f"{failed} of {len(requested)} packages refused")
        else:
            ticket.settle("ok")
        return Told("\n".join(lines), is_error=failed > 0)


async def get_mount_points(
    ctx: ToolContext, args: PyodideGetMountPointsArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    async with _gated_read(ctx, "pyodide_get-mount-points", raw, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        listed = [m.describe() for m in mounts(ctx, caller)]
        return Told(json.dumps(listed, indent=2))


async def list_mounted_directory(
    ctx: ToolContext,
    args: PyodideListMountedDirectoryArgs,
    raw: Mapping[str, Any],
    caller: Caller,
) -> Outcome:
    mount = find_mount(mounts(ctx, caller), args.mountName)
    async with _gated_read(ctx, "pyodide_list-mounted-directory", raw, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        try:
            entries = await HOST_IO.call(caller.grant, lambda: list_folder(mount.host, ""))
        except MountPathRefused as exc:
            raise ArgumentError("mountName", exc.expected, exc.got) from None
        except (HostIOBusy, HostIOTimeout) as exc:
            ticket.settle("refused", error=str(exc))
            return Told(f"Error: {exc}", is_error=True)
        listed = [
            {"name": e.name, "path": e.path, "kind": e.kind, "size": e.size_bytes} for e in entries
        ]
        return Told(json.dumps({"mount": mount.name, "entries": listed}, indent=2))


async def read_image(
    ctx: ToolContext, args: PyodideReadImageArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    mount = find_mount(mounts(ctx, caller), args.mountName)
    async with _gated_read(ctx, "pyodide_read-image", raw, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        try:
            image = await HOST_IO.call(
                caller.grant, lambda: read_image_file(mount.host, args.imagePath)
            )
        except MountPathRefused as exc:
            raise ArgumentError("imagePath", exc.expected, exc.got) from None
        except SandboxError as exc:
            ticket.settle("refused", error=str(exc))
            return Told(f"Error: {exc}", is_error=True)
        return Told(f"{mount.name}/{image.path}", images=(image,))


def _gated_read(
    ctx: ToolContext, tool: str, raw: Mapping[str, Any], caller: Caller
) -> AbstractAsyncContextManager[Ticket]:
    """The gate around a read-only tool of the caller's session."""
    session = ctx.session_of(caller)
    return ctx.gated(
        ToolCall(tool=tool, args=dict(raw), grant=caller.grant, session=session.id), caller
    )
