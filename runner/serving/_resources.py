"""Files under the mount points as MCP resources (`file:///workspace/…`, `file:///mounts/NAME/…`)."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import mcp_types as types

from sandboxes import (
    HOST_IO,
    FileRefused,
    HostIO,
    MountPathRefused,
    list_mounted_directory,
    read_file,
)

from .._errors import ArgumentError, NotFound
from .._mounts import WORKSPACE_MOUNT, MountPoint

MAX_LISTED = 500
MAX_READ_BYTES = 8 * 1024 * 1024


def _where(mount: MountPoint) -> str:
    """The folder a resource lives in, in words: the session's workspace or a mount."""
    return (
        "the session's workspace (/workspace)"
        if mount.name == WORKSPACE_MOUNT
        else f"the operator's mount '{mount.name}' ({mount.guest})"
    )


def _prefix(mount: MountPoint) -> str:
    return (
        "file:///workspace/" if mount.name == WORKSPACE_MOUNT else f"file:///mounts/{mount.name}/"
    )


async def list_resources(
    mounts: list[MountPoint], *, grant: str, io: HostIO = HOST_IO
) -> list[types.Resource]:
    """`find_resources` on the host I/O executor, as one of `grant`'s operations.

    Raises:
        HostIOBusy, HostIOTimeout: the grant's host file operations are stuck or too many.
    """
    return await io.call(grant, lambda: find_resources(mounts))


def find_resources(mounts: list[MountPoint]) -> list[types.Resource]:
    """Regular files under every mount (links never followed), at most `MAX_LISTED`."""
    found: list[types.Resource] = []
    for mount in mounts:
        stack = [""]
        while stack and len(found) < MAX_LISTED:
            folder = stack.pop()
            try:
                entries = list_mounted_directory(mount.host, folder)
            except MountPathRefused:
                continue
            for entry in entries:
                if entry.kind == "directory":
                    stack.append(entry.path)
                elif entry.kind == "file" and len(found) < MAX_LISTED:
                    mime, _ = mimetypes.guess_type(entry.name)
                    found.append(
                        types.Resource(
                            uri=_prefix(mount) + quote(entry.path),
                            name=f"{mount.name}/{entry.path}",
                            mime_type=mime,
                            size=entry.size_bytes,
                        )
                    )
    return found


async def read_resource(
    mounts: list[MountPoint], uri: str, *, grant: str, io: HostIO = HOST_IO
) -> types.ReadResourceResult:
    """`resource_contents` on the host I/O executor, as one of `grant`'s operations: a FIFO,
    socket or device is refused at once, and a read stuck on a slow disk holds only a place of
    `grant`'s (`io.per_grant`), never the server's thread pool.

    Raises:
        ArgumentError: not a `file://` URI under a mount, or not a readable regular file.
        HostIOBusy, HostIOTimeout: the grant's host file operations are stuck or too many.
    """
    return await io.call(grant, lambda: resource_contents(mounts, uri))


def _refused(mount: MountPoint, uri: str, exc: FileRefused) -> ArgumentError:
    """Why a resource cannot be read, one text per reason: missing, too large, not a file."""
    where = _where(mount)
    if exc.got.startswith("no such file"):
        return NotFound(
            "uri",
            f"a file in {where}",
            f"{uri}, which does not exist there",
            hint="list the readable files with resources/list",
        )
    if exc.got == "a larger file":
        return ArgumentError(
            "uri",
            f"a file of at most {MAX_READ_BYTES} bytes ({MAX_READ_BYTES >> 20} MiB), the most "
            "resources/read returns",
            f"{uri}, which is larger",
            hint="read a part of it with code run in the same session (its files are there)",
        )
    return ArgumentError(
        "uri",
        f"a regular file in {where}, reached without symbolic links",
        f"{uri}, which is {exc.got}",
        hint="list the readable files with resources/list",
    )


def resource_templates(mounts: list[MountPoint]) -> list[types.ResourceTemplate]:
    """One URI template per folder resources/read reads: the workspace and each mount."""
    return [
        types.ResourceTemplate(
            uri_template=_prefix(mount) + "{+path}",
            name=mount.name,
            title=f"Files in {_where(mount)}",
            description=f"A file in {_where(mount)} by its path there (resources/list names them).",
        )
        for mount in mounts
    ]


def resource_contents(mounts: list[MountPoint], uri: str) -> types.ReadResourceResult:
    """The contents of a `file://` resource under a mount (blocking).

    Raises:
        ArgumentError: not a `file://` URI under a mount, or not a readable regular file.
    """
    parsed = urlparse(uri)
    path = unquote(parsed.path)
    if "\x00" in path:
        raise ArgumentError("uri", "a file:// URI without NUL characters (%00)", uri)
    for mount in mounts:
        root = urlparse(_prefix(mount)).path
        if parsed.scheme == "file" and path.startswith(root):
            rel = path[len(root) :]
            try:
                data = read_file(mount.host, rel, max_bytes=MAX_READ_BYTES)
            except FileRefused as exc:
                raise _refused(mount, uri, exc) from None
            mime, _ = mimetypes.guess_type(Path(rel).name)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                blob = base64.b64encode(data).decode("ascii")
                return types.ReadResourceResult(
                    contents=[types.BlobResourceContents(uri=uri, blob=blob, mime_type=mime)]
                )
            return types.ReadResourceResult(
                contents=[types.TextResourceContents(uri=uri, text=text, mime_type=mime)]
            )
    raise ArgumentError("uri", "a file:///workspace/… or file:///mounts/NAME/… URI", uri)
