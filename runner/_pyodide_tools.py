"""The Mcp Pyodide tools: execute, install packages, mount points, listings and images."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import mcp_types as types

from policies import Denied, ToolCall
from sandboxes import HOST_IO, HostIOBusy, HostIOTimeout, Program, RunResult, SandboxError
from sandboxes.pyodide import MountPathRefused, list_mounted_directory, read_image

from . import _format
from ._arguments import (
    PyodideExecuteArgs,
    PyodideGetMountPointsArgs,
    PyodideInstallPackagesArgs,
    PyodideListMountedDirectoryArgs,
    PyodideReadImageArgs,
    as_float,
    validate_arguments,
)
from ._errors import ArgumentError
from ._installs import InstallRefused
from ._mounts import WORKSPACE_GUEST_PATH, MountPoint, find_mount, session_mounts

if TYPE_CHECKING:
    from ._service import Caller, Service

MS_PER_S = 1000.0


def guest_path(path: str) -> str:
    """Where code sees a file the run wrote: workspace-relative paths under `/workspace`;
    files in an operator mount come as their guest path (`/mnt/NAME/…`) already."""
    return path if path.startswith("/") else f"{WORKSPACE_GUEST_PATH}/{path}"


def execute_text(result: RunResult) -> types.CallToolResult:
    """`pyodide_execute`'s result: output, the final expression's value, images."""
    blocks = [
        types.ImageContent(
            type="image", data=base64.b64encode(i.data).decode("ascii"), mime_type=i.mime_type
        )
        for i in result.images
    ]
    parts: list[str] = []
    if result.status == "error":
        parts.append(f"Error: {result.error or f'exit status {result.exit_code}'}")
    elif result.status != "ok":
        parts.append(f"Error: the code was stopped by {result.status} ({result.limit})")
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.status == "ok" and result.value_found and result.value is not None:
        parts.append(f"Result: {result.value}")
    if result.images:
        parts.append("images: " + ", ".join(guest_path(i.path) for i in result.images))
    text = "\n".join(parts) if parts else "(no output)"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text), *blocks],
        is_error=result.status != "ok",
    )


class PyodideTools:
    """The five Mcp Pyodide tools, served through `service`'s gate and engines."""

    def __init__(self, service: Service, operator_mounts: tuple[MountPoint, ...]) -> None:
        self._service = service
        self._operator_mounts = operator_mounts

    def handlers(self) -> dict[str, Any]:
        return {
            "pyodide_execute": self.execute,
            "pyodide_install-packages": self.install_packages,
            "pyodide_get-mount-points": self.get_mount_points,
            "pyodide_list-mounted-directory": self.list_mounted_directory,
            "pyodide_read-image": self.read_image,
        }

    def mounts(self, caller: Caller) -> list[MountPoint]:
        """The mount points `caller`'s session sees."""
        session = self._service.session_of(caller)
        return session_mounts(session.workspace.files, self._operator_mounts)

    async def execute(self, raw: Mapping[str, Any], caller: Caller) -> types.CallToolResult:
        args = validate_arguments(PyodideExecuteArgs, raw)
        if not args.timeout > 0:
            raise ArgumentError("timeout", "milliseconds above 0", repr(args.timeout))
        session = self._service.session_of(caller)
        program = Program("code", args.code)
        outcome = await self._service.execute(
            "pyodide_execute",
            raw,
            caller,
            session,
            program,
            requested_timeout_s=as_float(args.timeout) / MS_PER_S,
        )
        if isinstance(outcome, types.CallToolResult):
            return outcome
        return execute_text(outcome)

    async def install_packages(
        self, raw: Mapping[str, Any], caller: Caller
    ) -> types.CallToolResult:
        args = validate_arguments(PyodideInstallPackagesArgs, raw)
        service = self._service
        requested = service.installer.parse_list(args.package, argument="package")
        session = service.session_of(caller)
        call = ToolCall(
            tool="pyodide_install-packages", args=dict(raw), grant=caller.grant, session=session.id
        )
        decision = await service.decide(call, caller)
        if isinstance(decision, Denied):
            return _format.denied_result(decision.rule, decision.reason)
        lines: list[str] = []
        failed = 0
        for item in requested:
            try:
                lines.append(
                    await asyncio.to_thread(
                        service.installer.install, item, session.workspace, engine="pyodide"
                    )
                )
            except InstallRefused as exc:
                failed += 1
                lines.append(f"Error installing package {item.name}: {exc}")
        status = "ok" if not failed else "refused"
        service.finish(
            decision,
            "completed",
            status=status,
            error=None if not failed else f"{failed} of {len(requested)} packages refused",
        )
        return _format.text_result("\n".join(lines), is_error=failed > 0)

    async def get_mount_points(
        self, raw: Mapping[str, Any], caller: Caller
    ) -> types.CallToolResult:
        validate_arguments(PyodideGetMountPointsArgs, raw)
        refused = await self._gate_read("pyodide_get-mount-points", raw, caller)
        if refused is not None:
            return refused
        shown = self._code_sees_operator_mounts()
        listed = [
            m.describe(visible=shown or m.guest == WORKSPACE_GUEST_PATH)
            for m in self.mounts(caller)
        ]
        return _format.text_result(json.dumps(listed, indent=2))

    async def list_mounted_directory(
        self, raw: Mapping[str, Any], caller: Caller
    ) -> types.CallToolResult:
        args = validate_arguments(PyodideListMountedDirectoryArgs, raw)
        mount = find_mount(self.mounts(caller), args.mountName)
        refused = await self._gate_read("pyodide_list-mounted-directory", raw, caller)
        if refused is not None:
            return refused
        try:
            entries = await HOST_IO.call(
                caller.grant, lambda: list_mounted_directory(mount.host, "")
            )
        except MountPathRefused as exc:
            raise ArgumentError("mountName", exc.expected, exc.got) from None
        except (HostIOBusy, HostIOTimeout) as exc:
            return _format.error_result(f"Error: {exc}")
        listed = [
            {"name": e.name, "path": e.path, "kind": e.kind, "size": e.size_bytes} for e in entries
        ]
        return _format.text_result(json.dumps({"mount": mount.name, "entries": listed}, indent=2))

    async def read_image(self, raw: Mapping[str, Any], caller: Caller) -> types.CallToolResult:
        args = validate_arguments(PyodideReadImageArgs, raw)
        mount = find_mount(self.mounts(caller), args.mountName)
        refused = await self._gate_read("pyodide_read-image", raw, caller)
        if refused is not None:
            return refused
        try:
            image = await HOST_IO.call(caller.grant, lambda: read_image(mount.host, args.imagePath))
        except MountPathRefused as exc:
            raise ArgumentError("imagePath", exc.expected, exc.got) from None
        except SandboxError as exc:
            return _format.error_result(f"Error: {exc}")
        return types.CallToolResult(
            content=[
                types.ImageContent(
                    type="image",
                    data=base64.b64encode(image.data).decode("ascii"),
                    mime_type=image.mime_type,
                ),
                types.TextContent(type="text", text=f"{mount.name}/{image.path}"),
            ]
        )

    def _code_sees_operator_mounts(self) -> bool:
        """Whether the engine that runs `pyodide_execute` shows operator mounts (pyodide)."""
        try:
            return self._service._engine_kind("pyodide_execute") == "pyodide"
        except KeyError:
            return False

    async def _gate_read(
        self, tool: str, raw: Mapping[str, Any], caller: Caller
    ) -> types.CallToolResult | None:
        """Ask the gate about a read-only tool; the decision is finished at once."""
        service = self._service
        session = service.session_of(caller)
        call = ToolCall(tool=tool, args=dict(raw), grant=caller.grant, session=session.id)
        decision = await service.decide(call, caller)
        if isinstance(decision, Denied):
            return _format.denied_result(decision.rule, decision.reason)
        service.finish(decision, "completed", status="ok")
        return None
