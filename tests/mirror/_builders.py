"""Builders for the mirror tests: hand-made wheels, a local PEP 503 index, tree digests."""

from __future__ import annotations

import hashlib
import html
import shutil
import stat
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from runner.packages.mirror import SyncReport


@dataclass(frozen=True, slots=True)
class RealMirror:
    """A mirror synced once per session from the real upstream index."""

    path: Path
    allowlist_file: Path
    report: SyncReport
    progress: tuple[str, ...]


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
    tag: str = "py3-none-any",
    files: dict[str, bytes] | None = None,
    raw_members: Iterable[tuple[zipfile.ZipInfo, bytes]] = (),
) -> Path:
    """Write a wheel: a module `<name>.py` (or `files`), its METADATA, and any raw members."""
    dist = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    module = canonicalize_name(name).replace("-", "_")
    content = (
        files
        if files is not None
        else {f"{module}.py": f"NAME = {name!r}\nVERSION = {version!r}\n".encode()}
    )
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python is not None:
        meta.append(f"Requires-Python: {requires_python}")
    meta.extend(f"Requires-Dist: {r}" for r in requires)
    path = folder / f"{dist}-{tag}.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in content.items():
            archive.writestr(member, data)
        for info, data in raw_members:
            archive.writestr(info, data)
        archive.writestr(f"{dist}.dist-info/METADATA", "\n".join(meta) + "\n")
        archive.writestr(f"{dist}.dist-info/WHEEL", f"Wheel-Version: 1.0\nTag: {tag}\n")
        archive.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    """A zip member that unpacks as a symbolic link to `target`."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def write_index(root: Path, wheels: Iterable[Path], *, sdists: Iterable[str] = ()) -> str:
    """A PEP 503 index under `root/simple` for the wheels (copied to `root/files`); its URL."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    pages: dict[str, list[str]] = {}
    for wheel in wheels:
        shutil.copy2(wheel, files / wheel.name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        project = canonicalize_name(wheel.name.split("-")[0])
        href = html.escape(f"../../files/{wheel.name}#sha256={digest}")
        pages.setdefault(project, []).append(f'<a href="{href}">{wheel.name}</a>')
    for sdist in sdists:
        project = canonicalize_name(sdist.rsplit("-", 1)[0])
        pages.setdefault(project, []).append(f'<a href="../../files/{sdist}">{sdist}</a>')
    for name, links in pages.items():
        page = root / "simple" / name / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text("<html><body>\n" + "<br>\n".join(links) + "\n</body></html>\n")
    return (root / "simple").as_uri() + "/"


def tree_digest(folder: Path) -> str:
    """A hash of every path, size and content hash below `folder` (to prove it did not change)."""
    digest = hashlib.sha256()
    if not folder.exists():
        return "absent"
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not path.is_symlink():
            digest.update(f"{rel}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        else:
            digest.update(f"{rel}\0{'link' if path.is_symlink() else 'dir'}\n".encode())
    return digest.hexdigest()


def listing_digest(folder: Path) -> str:
    """A hash of every path with its size and mtime below `folder` (cheap; for site-packages)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()
