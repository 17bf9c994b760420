"""Choose, per engine, one wheel for each allowed package and each of its dependencies.

Breadth-first, newest compatible version first, no backtracking: allow-listed packages are
picked before any dependency, and a dependency already picked must satisfy every later
requirement on it, else the packages needing it fail (and are reported, not locked).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from ._errors import HashMismatch, IndexUnavailable, UnsafeWheel
from ._index import Index, redact
from ._lock import LockedPackage
from ._simple import IndexFile
from ._targets import Target
from ._wheel import read_metadata, sha256_file

MAX_VERSIONS_TRIED = 5
"""Versions downloaded at most per package when wheels' METADATA rules out the engine's Python."""


@dataclass(slots=True)
class _Node:
    name: str
    version: str
    file: IndexFile
    sha256: str
    size: int
    requires_python: str | None
    requires_dist: tuple[str, ...]
    deps: set[str] = field(default_factory=set)
    extras: set[str] = field(default_factory=set)


class Fetcher:
    """Shared by every engine of one sync: index pages, downloads and hashes, each done once.

    Args:
        index: The upstream index.
        files_dir: Where wheels are kept.
        known_hashes: File name → sha256 from the previous lock (for resuming).
        progress: Receives one line per step.
    """

    def __init__(
        self,
        index: Index,
        files_dir: Path,
        known_hashes: Mapping[str, str],
        progress: Callable[[str], None],
    ) -> None:
        self.index = index
        self.files_dir = files_dir
        self.progress = progress
        self.downloaded: list[str] = []
        self.reused: list[str] = []
        self.bytes_downloaded = 0
        self._known = dict(known_hashes)
        self._pages: dict[str, list[IndexFile] | IndexUnavailable | None] = {}
        self._have: dict[str, tuple[str, int]] = {}

    def page(self, name: str) -> list[IndexFile] | None:
        """The project's files (cached); `None` if the index does not have it."""
        if name not in self._pages:
            self.progress(f"index: {name}")
            try:
                self._pages[name] = self.index.project_files(name)
            except IndexUnavailable as exc:
                self._pages[name] = exc
        cached = self._pages[name]
        if isinstance(cached, IndexUnavailable):
            raise cached
        return cached

    def fetch(self, file: IndexFile) -> tuple[str, int]:
        """Make sure `file` lies in `files_dir` with the right hash; returns (sha256, size)."""
        if file.filename in self._have:
            return self._have[file.filename]
        dest = self.files_dir / file.filename
        expected = (file.sha256 or self._known.get(file.filename) or "").lower()
        if dest.is_file() and expected and sha256_file(dest) == expected:
            self.progress(f"have {file.filename} (sha256 ok)")
            self.reused.append(file.filename)
            result = (expected, dest.stat().st_size)
        else:
            self.progress(f"download {file.filename}")
            result = self.index.download(file, dest, progress=self.progress)
            self.downloaded.append(file.filename)
            self.bytes_downloaded += result[1]
        self._have[file.filename] = result
        return result


def resolve_engine(
    fetcher: Fetcher, target: Target, roots: Mapping[str, SpecifierSet]
) -> tuple[list[LockedPackage], dict[str, str]]:
    """Pick and fetch wheels for `roots` and their dependencies on one engine.

    Returns:
        The locked packages of every root whose whole closure was fetched, and root name →
        reason for each root that could not be.
    """
    nodes: dict[str, _Node] = {}
    broken: dict[str, str] = {}
    queue: deque[tuple[str, SpecifierSet, frozenset[str], str | None]] = deque(
        (name, spec, frozenset(), None) for name, spec in sorted(roots.items())
    )
    while queue:
        name, spec, extras, parent = queue.popleft()
        if parent is not None:
            nodes[parent].deps.add(name)
        if name in broken:
            continue
        node = nodes.get(name)
        if node is None:
            try:
                node = _pick(fetcher, target, name, roots.get(name, spec) & spec)
            except (IndexUnavailable, HashMismatch, UnsafeWheel, _NoCandidate) as exc:
                broken[name] = str(exc)
                continue
            nodes[name] = node
        elif not spec.contains(Version(node.version), prereleases=True):
            assert parent is not None
            broken[parent] = (
                f"needs {name}{spec}, but {name}=={node.version} was already "
                "chosen (no backtracking; pin a compatible version in the allow-list)"
            )
            continue
        new_extras = (set(extras) | {""}) - node.extras
        if not new_extras:
            continue
        node.extras |= new_extras
        for line in node.requires_dist:
            try:
                req = Requirement(line)
            except InvalidRequirement as exc:
                broken[name] = f"unparsable Requires-Dist {line!r}: {exc}"
                break
            if req.marker is not None and not any(
                target.marker_true(req.marker, e) for e in new_extras
            ):
                continue
            if req.url:
                broken[name] = f"depends on a direct URL ({req.name} @ ...), which is not mirrored"
                break
            queue.append((canonicalize_name(req.name), req.specifier, frozenset(req.extras), name))
    return _lock_roots(target, roots, nodes, broken)


def _lock_roots(
    target: Target,
    roots: Mapping[str, SpecifierSet],
    nodes: dict[str, _Node],
    broken: dict[str, str],
) -> tuple[list[LockedPackage], dict[str, str]]:
    locked: dict[str, LockedPackage] = {}
    failures: dict[str, str] = {}
    for root in sorted(roots):
        closure: list[str] = []
        stack, seen, reason = [root], {root}, None
        while stack and reason is None:
            name = stack.pop()
            if name in broken:
                reason = broken[name] if name == root else f"dependency {name}: {broken[name]}"
                break
            closure.append(name)
            for dep in sorted(nodes[name].deps - seen):
                seen.add(dep)
                stack.append(dep)
        if reason is not None:
            failures[root] = reason
            continue
        for name in closure:
            node = nodes[name]
            locked[name] = LockedPackage(
                name=name,
                version=node.version,
                filename=node.file.filename,
                sha256=node.sha256,
                size=node.size,
                engines=(target.engine,),
                dependencies=tuple(sorted(node.deps)),
                direct=name in roots,
                requires_python=node.requires_python,
                source_url=redact(node.file.url),
            )
    return list(locked.values()), failures


class _NoCandidate(Exception):
    """No wheel fits (internal; becomes a failure line)."""


def _pick(fetcher: Fetcher, target: Target, name: str, spec: SpecifierSet) -> _Node:
    files = fetcher.page(name)
    if files is None:
        raise _NoCandidate(f"{name} is not on the index {fetcher.index.display_url}")
    best: dict[Version, tuple[int, tuple[()] | tuple[int, str], IndexFile]] = {}
    in_range = 0
    for file in files:
        if not file.filename.endswith(".whl") or file.yanked:
            continue
        try:
            wname, version, build, tags = parse_wheel_filename(file.filename)
        except InvalidWheelFilename:
            continue
        if wname != name or not spec.contains(version, prereleases=spec.prereleases or False):
            continue
        in_range += 1
        rank = target.tag_rank(tags)
        if rank is None or not target.accepts_python(file.requires_python):
            continue
        if version not in best or (-rank, build) > best[version][:2]:
            best[version] = (-rank, build, file)
    shown = f"{name}{spec}" if str(spec) else name
    if not best:
        kinds = "pure-Python (py3-none-any)" if target.pure_only else "CPython 3.11 manylinux"
        why = (
            "no wheel in that range"
            if not in_range
            else f"{in_range} wheel(s) in range, none {kinds} for Python "
            f"{target.python_full_version}"
        )
        raise _NoCandidate(
            f"no wheel of {shown} for {target.engine}: the index has {why} "
            "(sdists are never mirrored)"
        )
    skipped: list[str] = []
    for version in sorted(best, reverse=True)[:MAX_VERSIONS_TRIED]:
        file = best[version][2]
        sha256, size = fetcher.fetch(file)
        meta = read_metadata(fetcher.files_dir / file.filename)
        if meta.name != name or Version(meta.version) != version:
            raise _NoCandidate(f"{file.filename}: its METADATA says {meta.name}=={meta.version}")
        if not target.accepts_python(meta.requires_python):
            skipped.append(f"{version} requires Python {meta.requires_python}")
            continue
        return _Node(
            name=name,
            version=str(version),
            file=file,
            sha256=sha256,
            size=size,
            requires_python=meta.requires_python or file.requires_python,
            requires_dist=meta.requires_dist,
        )
    raise _NoCandidate(
        f"no wheel of {shown} for {target.engine} (Python {target.python_full_version}): "
        + "; ".join(skipped)
    )
