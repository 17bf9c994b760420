"""Install a package from the mirror into a session's site folder: verify, unpack, never run.

No network, no pip, no build step: each wheel of the request (the package and its locked
dependencies) is copied out of the mirror while hashed, checked against the lock, unpacked
into a staging folder beside the site folder, and only when every wheel passed are the files
moved into place. `site_dir/.sandgate-installed.json` records what is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from ._errors import HashMismatch, InstallFailed, NotAllowed, NoWheel
from ._lock import Lock, LockedPackage, load_lock
from ._locking import folder_lock
from ._requirement import Requested
from ._wheel import MAX_UNPACKED_BYTES, unpack

INSTALLED_FILE = ".sandgate-installed.json"
"""The record of installed packages, inside the site folder."""
_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What `install` did.

    Attributes:
        installed: `name==version` of each wheel unpacked now (dependencies included).
        already_present: `name==version` of each wheel of the request that was already there.
    """

    installed: tuple[str, ...]
    already_present: tuple[str, ...]


def install(
    requested: Requested,
    *,
    mirror_dir: str | Path,
    site_dir: str | Path,
    engine: str,
    max_bytes: int = MAX_UNPACKED_BYTES,
) -> InstallResult:
    """Install `requested` and its locked dependencies from the mirror into `site_dir`.

    Call `check_allowed` first; this function installs only allow-listed (direct) packages
    of the lock, at the locked version. Safe to call from several threads or processes for
    the same `site_dir`: installs of one folder take turns.

    Args:
        requested: A request that passed `parse_requirement` (and `check_allowed`).
        mirror_dir: The mirror directory (its `lock.json` and `files/`).
        site_dir: The session's site folder (created if missing).
        engine: The engine the site folder serves.
        max_bytes: Most bytes the request may unpack.

    Returns:
        What was unpacked and what was already there.

    Raises:
        MirrorMissing: The mirror has no lock.
        NotAllowed: The lock holds the package only as a dependency.
        NoWheel: The lock has no wheel (of that version) for `engine`, or the file is gone.
        HashMismatch: A wheel's bytes differ from the lock; nothing was installed.
        UnsafeWheel: A wheel's archive was refused; nothing was installed.
        InstallFailed: The site folder could not be written.
        MirrorBusy: Another install into `site_dir` held it too long.
    """
    lock = load_lock(mirror_dir)
    root = _locked_root(requested, lock, engine)
    closure = lock.closure(root, engine)
    site = Path(site_dir)
    try:
        if site.is_symlink():
            raise InstallFailed(
                f"site folder {site} is a symbolic link; refusing to write through it",
                package=root.name,
                site_dir=site,
            )
        site.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InstallFailed(
            f"site folder {site}: cannot create it: {exc}", package=root.name, site_dir=site
        ) from exc
    with folder_lock(site):
        record = _read_record(site)
        present = [p for p in closure if record.get(p.name, {}).get("sha256") == p.sha256]
        todo = [p for p in closure if p not in present]
        if todo:
            _install_all(todo, lock, site, record, engine, max_bytes)
    return InstallResult(
        installed=tuple(str(p) for p in todo), already_present=tuple(str(p) for p in present)
    )


def installed_packages(site_dir: str | Path) -> dict[str, str]:
    """Name → version of every package the record says `site_dir` holds."""
    return {
        name: str(entry.get("version", "")) for name, entry in _read_record(Path(site_dir)).items()
    }


def _locked_root(requested: Requested, lock: Lock, engine: str) -> LockedPackage:
    root = lock.find(requested.name, engine)
    if root is None:
        raise NoWheel(
            f"{requested.name}: the mirror at {lock.mirror_dir} has no wheel of it for "
            f"{engine}; run `sandgate mirror sync`",
            package=requested.name,
            engine=engine,
            version=requested.pin,
        )
    if not root.direct:
        raise NotAllowed(
            f"package_name {requested.name!r} refused: the mirror holds it only as "
            "a dependency of an allowed package; ask the operator to allow it",
            package=requested.name,
            engine=engine,
        )
    if requested.pin is not None and Version(requested.pin) != Version(root.version):
        raise NoWheel(
            f"{requested}: the mirror holds {root} for {engine}; ask for {root.name} without a pin",
            package=root.name,
            engine=engine,
            version=requested.pin,
        )
    return root


def _install_all(
    todo: list[LockedPackage],
    lock: Lock,
    site: Path,
    record: dict[str, dict[str, object]],
    engine: str,
    max_bytes: int,
) -> None:
    first = todo[0].name
    try:
        staging = Path(tempfile.mkdtemp(prefix=".sandgate-staging-", dir=site.parent))
    except OSError as exc:
        raise InstallFailed(
            f"cannot create a staging folder beside {site}: {exc}", package=first, site_dir=site
        ) from exc
    try:
        unpacked: list[tuple[LockedPackage, Path, list[str]]] = []
        copies = [(pkg, _verified_copy(pkg, lock, staging)) for pkg in todo]
        budget = max_bytes
        for number, (pkg, copy) in enumerate(copies):
            dest = staging / f"unpacked-{number}"
            dest.mkdir()
            files, used = unpack(copy, dest, budget_bytes=budget)
            budget -= used
            unpacked.append((pkg, dest, files))
        for _, _, files in unpacked:  # refuse links or folders in the way before moving any file
            for rel in files:
                _safe_target(site, rel, create=False)
        for pkg, dest, files in unpacked:
            _remove_old(site, record.get(pkg.name))
            for rel in files:
                _move_into(dest, site, rel)
            record[pkg.name] = {
                "version": pkg.version,
                "filename": pkg.filename,
                "sha256": pkg.sha256,
                "engine": engine,
                "files": files,
            }
        _write_record(site, record)
    except OSError as exc:
        raise InstallFailed(
            f"installing {first} into {site} failed: {exc}", package=first, site_dir=site
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _verified_copy(pkg: LockedPackage, lock: Lock, staging: Path) -> Path:
    """Copy the wheel into staging while hashing it, so the bytes unpacked are the bytes checked."""
    source = lock.wheel_path(pkg)
    copy = staging / pkg.filename
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, copy.open("xb") as out:
            while chunk := src.read(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
    except FileNotFoundError:
        raise NoWheel(
            f"{source}: the locked wheel of {pkg} is missing from the mirror; run "
            "`sandgate mirror verify` and `sandgate mirror sync`",
            package=pkg.name,
            engine=",".join(pkg.engines),
            version=pkg.version,
        ) from None
    if digest.hexdigest() != pkg.sha256:
        raise HashMismatch(file=source, expected=pkg.sha256, actual=digest.hexdigest())
    return copy


def _safe_target(site: Path, rel: str, *, create: bool = True) -> Path:
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise OSError(f"refusing the path {rel!r}")
    current = site
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise OSError(f"{current} is a symbolic link; refusing to write through it")
        if create:
            current.mkdir(exist_ok=True)
    target = current / parts[-1]
    if target.is_symlink() or target.is_dir():
        raise OSError(f"{target} is a link or a folder; refusing to replace it")
    return target


def _move_into(staged_root: Path, site: Path, rel: str) -> None:
    os.replace(staged_root.joinpath(*rel.split("/")), _safe_target(site, rel))


def _remove_old(site: Path, entry: dict[str, object] | None) -> None:
    files = entry.get("files") if entry else None
    for rel in files if isinstance(files, list) else []:
        if isinstance(rel, str):
            try:
                target = _safe_target(site, rel, create=False)
            except OSError:
                continue
            target.unlink(missing_ok=True)
            _prune_empty(site, target.parent)


def _prune_empty(site: Path, folder: Path) -> None:
    """Remove `folder` and its parents up to (not including) `site` while they are empty."""
    while folder != site and folder.is_relative_to(site):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _read_record(site: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads((site / INSTALLED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    packages = data.get("packages") if isinstance(data, dict) else None
    if not isinstance(packages, dict):
        return {}
    return {str(k): v for k, v in packages.items() if isinstance(v, dict)}


def _write_record(site: Path, record: dict[str, dict[str, object]]) -> None:
    path = site / INSTALLED_FILE
    tmp = path.with_name(f".{INSTALLED_FILE}.tmp")
    tmp.write_text(
        json.dumps({"version": 1, "packages": dict(sorted(record.items()))}, indent=2) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, path)
