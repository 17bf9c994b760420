"""Build and check the local mirror: `sync_mirror` (the only networked step) and `verify_mirror`."""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ._allowlist import ENGINES, AllowList
from ._errors import MirrorError, MirrorMissing
from ._index import Index
from ._lock import FILES_DIR, Lock, LockedPackage, load_lock, write_lock
from ._locking import folder_lock
from ._resolve import Fetcher, resolve_engine
from ._simple import write_simple_index
from ._targets import DEFAULT_TARGETS, Target
from ._wheel import sha256_file

ProblemKind = Literal["missing", "size_mismatch", "hash_mismatch", "index_stale"]


@dataclass(frozen=True, slots=True)
class SyncFailure:
    """An allow-listed package the sync could not mirror for one engine.

    Attributes:
        package: The allow-listed name.
        engine: The engine.
        reason: What went wrong (no wheel, not on the index, download failed, ...).
    """

    package: str
    engine: str
    reason: str

    def __str__(self) -> str:
        return f"{self.package} [{self.engine}]: {self.reason}"


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What `sync_mirror` did.

    Attributes:
        mirror_dir: The mirror directory.
        index_url: The upstream index used (credentials removed).
        locked: Every package now in the lock.
        downloaded: Wheel file names fetched in this run.
        reused: Wheel file names already present with the right hash.
        bytes_downloaded: Bytes fetched in this run.
        failures: Allow-listed packages (per engine) that could not be mirrored.
        elapsed_s: Wall seconds the sync took.
    """

    mirror_dir: Path
    index_url: str
    locked: tuple[LockedPackage, ...]
    downloaded: tuple[str, ...]
    reused: tuple[str, ...]
    bytes_downloaded: int
    failures: tuple[SyncFailure, ...]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """Whether every allow-listed package was mirrored for every engine asked for."""
        return not self.failures


@dataclass(frozen=True, slots=True)
class Problem:
    """Something `verify_mirror` found wrong.

    Attributes:
        file: The mirror-relative path (`files/six-1.17.0-py2.py3-none-any.whl`).
        kind: `missing`, `size_mismatch`, `hash_mismatch` or `index_stale`.
        expected: What the lock says.
        actual: What is there.
    """

    file: str
    kind: ProblemKind
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: expected {self.expected}, got {self.actual}"


def _no_progress(line: str) -> None:
    del line


def sync_mirror(
    allowlist: AllowList,
    mirror_dir: str | Path,
    *,
    index_url: str | None = None,
    engines: Sequence[str] = ENGINES,
    progress: Callable[[str], None] = _no_progress,
    targets: Mapping[str, Target] | None = None,
) -> SyncReport:
    """Download wheels for the allow-list and their dependencies; write the lock and index.

    Resumable: a wheel already in `mirror_dir/files` with the expected hash is not fetched
    again. Lock entries of engines not in `engines` are kept as they were.

    Args:
        allowlist: What to mirror.
        mirror_dir: The mirror directory (created if missing).
        index_url: The upstream simple index; `None` means pip's configured index.
        engines: Engines to sync.
        progress: Receives one human-readable line per step.
        targets: Engine → interpreter description; defaults to `DEFAULT_TARGETS`.

    Returns:
        What was locked, fetched, reused and what failed.

    Raises:
        MirrorError: An engine is unknown, or the mirror folder cannot be written.
        MirrorBusy: Another sync of the same mirror is running.
    """
    started = time.monotonic()
    chosen = dict(DEFAULT_TARGETS if targets is None else targets)
    for engine in engines:
        if engine not in chosen:
            raise MirrorError(
                f"engines: unknown engine {engine!r}; expected one of {', '.join(chosen)}"
            )
    folder = Path(mirror_dir)
    files_dir = folder / FILES_DIR
    try:
        files_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MirrorError(f"--mirror {folder}: cannot create the mirror folder: {exc}") from exc
    with folder_lock(folder):
        try:
            previous = load_lock(folder)
        except MirrorMissing:
            previous = Lock(packages=(), index_url="", mirror_dir=folder)
        index = Index.from_pip(index_url)
        progress(f"index {index.display_url}; engines {', '.join(engines)}")
        fetcher = Fetcher(
            index, files_dir, {p.filename: p.sha256 for p in previous.packages}, progress
        )
        fresh: list[LockedPackage] = []
        failures: list[SyncFailure] = []
        for engine in engines:
            roots = allowlist.for_engine(engine)
            progress(f"{engine}: resolving {len(roots)} allow-listed package(s)")
            locked, failed = resolve_engine(fetcher, chosen[engine], roots)
            fresh.extend(locked)
            for name, why in sorted(failed.items()):
                failures.append(SyncFailure(name, engine, why))
                progress(f"FAILED {failures[-1]}")
        kept = [
            replace(p, engines=tuple(e for e in p.engines if e not in engines))
            for p in previous.packages
        ]
        packages = _merge([p for p in kept if p.engines] + fresh)
        lock = Lock(packages=packages, index_url=index.display_url, mirror_dir=folder)
        write_lock(lock)
        write_simple_index(folder, packages)
    progress(
        f"locked {len(packages)} wheel(s): {len(fetcher.downloaded)} downloaded "
        f"({fetcher.bytes_downloaded} bytes), {len(fetcher.reused)} already present, "
        f"{len(failures)} failure(s)"
    )
    return SyncReport(
        mirror_dir=folder,
        index_url=index.display_url,
        locked=packages,
        downloaded=tuple(fetcher.downloaded),
        reused=tuple(fetcher.reused),
        bytes_downloaded=fetcher.bytes_downloaded,
        failures=tuple(failures),
        elapsed_s=time.monotonic() - started,
    )


def verify_mirror(mirror_dir: str | Path) -> list[Problem]:
    """Re-hash every locked wheel and check the simple index lists it with that hash.

    Returns:
        Every problem found; empty when the mirror matches its lock.

    Raises:
        MirrorMissing: The mirror has no readable lock file.
    """
    lock = load_lock(mirror_dir)
    problems: list[Problem] = []
    checked: set[str] = set()
    for pkg in lock.packages:
        rel = f"{FILES_DIR}/{pkg.filename}"
        if pkg.filename not in checked:
            checked.add(pkg.filename)
            problems.extend(_check_file(lock.wheel_path(pkg), rel, pkg))
        page = lock.mirror_dir / "simple" / pkg.name / "index.html"
        link = html.escape(f"../../files/{pkg.filename}#sha256={pkg.sha256}")
        try:
            listed = link in page.read_text(encoding="utf-8")
        except OSError:
            listed = False
        if not listed:
            problems.append(
                Problem(
                    f"simple/{pkg.name}/index.html",
                    "index_stale",
                    f"a link to {pkg.filename} with its sha256",
                    "none",
                )
            )
    return problems


def _check_file(path: Path, rel: str, pkg: LockedPackage) -> list[Problem]:
    try:
        size = path.stat().st_size
        digest = sha256_file(path)
    except OSError:
        return [Problem(rel, "missing", f"{pkg.size} bytes", "no file")]
    if size != pkg.size:
        return [Problem(rel, "size_mismatch", f"{pkg.size} bytes", f"{size} bytes")]
    if digest != pkg.sha256:
        return [Problem(rel, "hash_mismatch", f"sha256 {pkg.sha256}", f"sha256 {digest}")]
    return []


def _engine_order(engine: str) -> tuple[int, str]:
    return (ENGINES.index(engine) if engine in ENGINES else len(ENGINES), engine)


def _merge(packages: Iterable[LockedPackage]) -> tuple[LockedPackage, ...]:
    """Fold entries that differ only in their engines into one."""
    merged: dict[tuple[object, ...], LockedPackage] = {}
    for pkg in packages:
        key = (pkg.name, pkg.version, pkg.filename, pkg.sha256, pkg.dependencies, pkg.direct)
        if key in merged:
            engines = set(merged[key].engines) | set(pkg.engines)
            pkg = replace(pkg, engines=tuple(sorted(engines, key=_engine_order)))
        merged[key] = pkg
    return tuple(sorted(merged.values(), key=lambda p: (p.name, p.version, p.engines)))
