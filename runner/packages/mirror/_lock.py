"""The mirror's lock file (`lock.json`): which wheel, at which hash, serves which engine."""

from __future__ import annotations

import json
import os
import re
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from ._errors import MirrorMissing, NoWheel

LOCK_FILE = "lock.json"
FILES_DIR = "files"
LOCK_VERSION = 1
_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True, slots=True)
class LockedPackage:
    """One wheel in the mirror.

    Attributes:
        name: PEP 503-normalized name.
        version: Exact version.
        filename: The wheel's file name under `files/`.
        sha256: The wheel's sha256 (hex).
        size: The wheel's size in bytes.
        engines: The engines this wheel serves.
        dependencies: Normalized names of its locked dependencies (for those engines).
        direct: `True` if allow-listed itself; `False` if mirrored only as a dependency.
        requires_python: The wheel's `Requires-Python`, or `None`.
        source_url: Where it was downloaded from (credentials removed).
    """

    name: str
    version: str
    filename: str
    sha256: str
    size: int
    engines: tuple[str, ...]
    dependencies: tuple[str, ...] = ()
    direct: bool = True
    requires_python: str | None = None
    source_url: str = ""

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True, slots=True)
class Lock:
    """The whole lock file.

    Attributes:
        packages: Every locked wheel; at most one per (name, engine).
        index_url: The upstream index it was synced from (credentials removed).
        mirror_dir: The mirror directory.
    """

    packages: tuple[LockedPackage, ...]
    index_url: str
    mirror_dir: Path

    def find(self, name: str, engine: str) -> LockedPackage | None:
        """The wheel serving `name` (normalized) on `engine`, or `None`."""
        for pkg in self.packages:
            if pkg.name == name and engine in pkg.engines:
                return pkg
        return None

    def wheel_path(self, pkg: LockedPackage) -> Path:
        """Where `pkg`'s wheel lies in the mirror."""
        return self.mirror_dir / FILES_DIR / pkg.filename

    def closure(self, root: LockedPackage, engine: str) -> tuple[LockedPackage, ...]:
        """`root` and every locked dependency it needs on `engine`, root first.

        Raises:
            NoWheel: A dependency is missing from the lock (run `sandgate mirror sync`).
        """
        seen: dict[str, LockedPackage] = {root.name: root}
        queue = deque([root])
        while queue:
            pkg = queue.popleft()
            for dep in pkg.dependencies:
                if dep in seen:
                    continue
                found = self.find(dep, engine)
                if found is None:
                    raise NoWheel(
                        f"{pkg} needs {dep!r}, which the mirror has no wheel of for {engine}; "
                        "run `sandgate mirror sync`",
                        package=dep,
                        engine=engine,
                        version=None,
                    )
                seen[dep] = found
                queue.append(found)
        return tuple(seen.values())


def load_lock(mirror_dir: str | Path) -> Lock:
    """Read `mirror_dir/lock.json`.

    Raises:
        MirrorMissing: There is no lock file, or it is unreadable or of an unknown version.
    """
    folder = Path(mirror_dir)
    path = folder / LOCK_FILE
    fix = f"run `sandgate mirror sync --mirror {folder}`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MirrorMissing(f"{path}: no mirror lock file here; {fix}", mirror_dir=folder) from None
    except (OSError, ValueError) as exc:
        raise MirrorMissing(
            f"{path}: unreadable lock file ({exc}); {fix}", mirror_dir=folder
        ) from exc
    if not isinstance(data, dict) or data.get("lock_version") != LOCK_VERSION:
        got = data.get("lock_version") if isinstance(data, dict) else type(data).__name__
        raise MirrorMissing(
            f"{path}: expected lock_version {LOCK_VERSION}, got {got!r}; {fix}", mirror_dir=folder
        )
    try:
        packages = tuple(_package(item) for item in data["packages"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MirrorMissing(
            f"{path}: malformed package entry ({exc!r}); {fix}", mirror_dir=folder
        ) from exc
    return Lock(packages=packages, index_url=str(data.get("index_url", "")), mirror_dir=folder)


def write_lock(lock: Lock) -> Path:
    """Write `lock.json` atomically; returns its path."""
    path = lock.mirror_dir / LOCK_FILE
    ordered = sorted(lock.packages, key=lambda p: (p.name, p.version, p.filename, p.engines))
    data = {
        "lock_version": LOCK_VERSION,
        "index_url": lock.index_url,
        "packages": [asdict(p) for p in ordered],
    }
    tmp = path.with_name(f".{LOCK_FILE}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def list_mirror(mirror_dir: str | Path) -> list[LockedPackage]:
    """Every locked wheel, sorted by name and version.

    Raises:
        MirrorMissing: The mirror has no readable lock file.
    """
    lock = load_lock(mirror_dir)
    return sorted(lock.packages, key=lambda p: (p.name, p.version, p.engines))


def default_mirror_dir() -> Path:
    """`$SANDGATE_HOME/mirror`, else `$XDG_STATE_HOME/sandgate/mirror`, else
    `~/.local/state/sandgate/mirror`."""
    home = os.environ.get("SANDGATE_HOME")
    if home:
        return Path(home).expanduser() / "mirror"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "sandgate" / "mirror"


def _package(item: dict[str, object]) -> LockedPackage:
    def text(key: str) -> str:
        value = item[key]
        if not isinstance(value, str):
            raise TypeError(f"{key} must be a string, got {type(value).__name__}")
        return value

    def names(key: str) -> tuple[str, ...]:
        value = item.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{key} must be a list of strings")
        return tuple(str(v) for v in value)

    size = item["size"]
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError("size must be an integer")
    rp = item.get("requires_python")
    filename = text("filename")
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise ValueError(f"filename {filename!r} is not a plain file name")
    name = text("name")
    if not _NAME.fullmatch(name):
        raise ValueError(f"name {name!r} is not a normalized package name")
    return LockedPackage(
        name=name,
        version=text("version"),
        filename=filename,
        sha256=text("sha256").lower(),
        size=size,
        engines=names("engines"),
        dependencies=names("dependencies"),
        direct=bool(item.get("direct", True)),
        requires_python=rp if isinstance(rp, str) else None,
        source_url=str(item.get("source_url", "")),
    )
