"""Wheels as archives: hash them, read their metadata, and unpack them safely (never run them)."""

from __future__ import annotations

import hashlib
import re
import stat
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

from packaging.utils import canonicalize_name

from ._errors import UnsafeWheel

MAX_UNPACKED_BYTES = 256 * 1024 * 1024
"""Most bytes one install request may unpack (all its wheels together)."""
MAX_MEMBERS = 100_000
"""Most archive members one wheel may hold."""
MAX_METADATA_BYTES = 16 * 1024 * 1024
_CHUNK_BYTES = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_INSTALLED_DATA = ("purelib", "platlib")


@dataclass(frozen=True, slots=True)
class WheelMetadata:
    """What a wheel's `METADATA` says about its dependencies.

    Attributes:
        name: The `Name` field, normalized.
        version: The `Version` field.
        requires_dist: Every `Requires-Dist` line, markers included.
        requires_python: The `Requires-Python` field, or `None`.
    """

    name: str
    version: str
    requires_dist: tuple[str, ...]
    requires_python: str | None


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(wheel: Path) -> WheelMetadata:
    """Read `*.dist-info/METADATA` from a wheel without unpacking it.

    Raises:
        UnsafeWheel: The file is not a zip, or has no (or more than one) `METADATA`.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            found = [
                i
                for i in archive.infolist()
                if re.fullmatch(r"[^/]+\.dist-info/METADATA", i.filename)
            ]
            if len(found) != 1:
                raise UnsafeWheel(
                    file=wheel,
                    member="",
                    reason=f"expected one *.dist-info/METADATA, found {len(found)}",
                )
            if found[0].file_size > MAX_METADATA_BYTES:
                raise UnsafeWheel(
                    file=wheel,
                    member=found[0].filename,
                    reason=f"larger than {MAX_METADATA_BYTES} bytes",
                )
            text = archive.read(found[0]).decode("utf-8", "replace")
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeWheel(
            file=wheel, member="", reason=f"not a readable zip archive: {exc}"
        ) from exc
    headers = HeaderParser().parsestr(text)
    return WheelMetadata(
        name=canonicalize_name(headers.get("Name", "")),
        version=str(headers.get("Version", "")),
        requires_dist=tuple(str(v) for v in headers.get_all("Requires-Dist") or ()),
        requires_python=headers.get("Requires-Python"),
    )


def check_members(wheel: Path, archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every regular file to install, with its site-relative path; refuses unsafe archives.

    Refused: absolute paths, drive letters, backslashes, `..`, empty or NUL-bearing names,
    symbolic links and other special files, duplicate names, more than `MAX_MEMBERS` members.
    Files under `*.data/purelib` and `*.data/platlib` go to the site root; other `*.data`
    parts (scripts, headers, data) are skipped.

    Raises:
        UnsafeWheel: A member breaks one of those rules.
    """
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeWheel(
            file=wheel, member="", reason=f"{len(infos)} members, more than {MAX_MEMBERS}"
        )
    out: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        bad = _bad_name(name)
        if bad:
            raise UnsafeWheel(file=wheel, member=name, reason=bad)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            raise UnsafeWheel(file=wheel, member=name, reason="symbolic links are not allowed")
        if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeWheel(file=wheel, member=name, reason="special files are not allowed")
        if name in seen:
            raise UnsafeWheel(file=wheel, member=name, reason="the name appears twice")
        seen.add(name)
        if info.is_dir():
            continue
        parts = PurePosixPath(name).parts
        if parts[0].endswith(".data"):
            if len(parts) < 3 or parts[1] not in _INSTALLED_DATA:
                continue
            parts = parts[2:]
        out.append((info, "/".join(parts)))
    return out


def unpack(wheel: Path, dest: Path, *, budget_bytes: int) -> tuple[list[str], int]:
    """Unpack a wheel's files into `dest` (an empty staging folder), refusing unsafe members.

    Args:
        wheel: The wheel, its hash already verified.
        dest: The folder to write into.
        budget_bytes: Most bytes this wheel may unpack to.

    Returns:
        The site-relative paths written, and the bytes written.

    Raises:
        UnsafeWheel: A member is unsafe, or the files exceed `budget_bytes`.
    """
    written: list[str] = []
    total = 0
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = check_members(wheel, archive)
            declared = sum(info.file_size for info, _ in members)
            if declared > budget_bytes:
                raise UnsafeWheel(
                    file=wheel,
                    member="",
                    reason=f"unpacks to {declared} bytes, more than {budget_bytes}",
                )
            root = dest.resolve()
            for info, rel in members:
                target = root.joinpath(*rel.split("/"))
                if not target.resolve().is_relative_to(root):
                    raise UnsafeWheel(
                        file=wheel,
                        member=info.filename,
                        reason="it would land outside the site folder",
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, target.open("xb") as out:
                    while chunk := src.read(_CHUNK_BYTES):
                        total += len(chunk)
                        if total > budget_bytes:
                            raise UnsafeWheel(
                                file=wheel,
                                member=info.filename,
                                reason=f"unpacks past {budget_bytes} bytes",
                            )
                        out.write(chunk)
                target.chmod(0o644)
                written.append(rel)
    except FileExistsError as exc:
        raise UnsafeWheel(
            file=wheel, member=str(exc.filename), reason="the path is written twice"
        ) from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise UnsafeWheel(
            file=wheel, member="", reason=f"not a readable zip archive: {exc}"
        ) from exc
    return written, total


def _bad_name(name: str) -> str | None:
    if not name or "\x00" in name:
        return "empty or NUL-bearing name"
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute paths are not allowed"
    if "\\" in name:
        return "backslashes are not allowed in member names"
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "`..`, `.` and empty path components are not allowed"
    return None
