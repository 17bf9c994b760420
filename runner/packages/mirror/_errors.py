"""The exceptions of `runner.mirror`: refusals of a request and failures of the mirror itself.

MirrorError
├── AllowListError        the allow-list file cannot be read or breaks the schema (file, key)
├── RequirementRefused    a requested requirement is not a plain name with an optional ==pin
├── NotAllowed            the package is not on the allow-list for this engine ("did you mean")
│   └── VersionNotAllowed the pinned version is outside the allow-listed range
├── NoWheel               allowed, but the mirror holds no (matching) wheel for this engine
├── MirrorMissing         the mirror directory has no readable lock file
├── HashMismatch          a wheel's sha256 differs from the one locked (or from the index)
├── UnsafeWheel           a wheel's archive holds a member that would escape or flood the site
├── InstallFailed         the site folder could not be written (disk full, permissions, links)
├── IndexUnavailable      the upstream index could not be read (sync only)
└── MirrorBusy            another process held the mirror's or the site's lock for too long
"""

from __future__ import annotations

from pathlib import Path


class MirrorError(Exception):
    """Root of every exception `runner.mirror` raises."""


class AllowListError(MirrorError):
    """The allow-list file is unreadable or invalid.

    Attributes:
        path: The allow-list file.
        key: The dotted key at fault (`packages.six`), or `""` for the file as a whole.
    """

    def __init__(self, message: str, *, path: Path, key: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class RequirementRefused(MirrorError):
    """A requested requirement was refused before any installer saw it.

    Attributes:
        argument: The tool argument that carried it (`package_name`).
        requested: The text as given.
        reason: Why it was refused, in words.
        suggestion: What to send instead, or `None`.
        kind: What was refused, as a stable word: `empty`, `too_long`, `option`, `vcs`,
            `url`, `whitespace`, `path`, `archive`, `direct_reference`, `markers`,
            `extras`, `range`, `name`, `version`.
    """

    def __init__(
        self,
        *,
        argument: str,
        requested: str,
        reason: str,
        suggestion: str | None = None,
        kind: str = "name",
    ) -> None:
        shown = requested if len(requested) <= 120 else requested[:117] + "..."
        message = f"{argument}={shown!r} refused: {reason}"
        if suggestion is not None:
            message += f"; {suggestion}"
        super().__init__(message)
        self.argument = argument
        self.requested = requested
        self.reason = reason
        self.suggestion = suggestion
        self.kind = kind


class NotAllowed(MirrorError):
    """The package is not on the allow-list for the engine.

    Attributes:
        package: The normalized name asked for.
        engine: The engine the request was for.
        suggestion: The nearest allow-listed name (a near-miss or typosquat), or `None`.
    """

    def __init__(
        self, message: str, *, package: str, engine: str, suggestion: str | None = None
    ) -> None:
        super().__init__(message)
        self.package = package
        self.engine = engine
        self.suggestion = suggestion


class VersionNotAllowed(NotAllowed):
    """The pinned version lies outside the allow-listed range.

    Attributes:
        requested: The pinned version.
        allowed: The allow-listed specifier (`""` means any version).
    """

    def __init__(
        self, message: str, *, package: str, engine: str, requested: str, allowed: str
    ) -> None:
        super().__init__(message, package=package, engine=engine)
        self.requested = requested
        self.allowed = allowed


class NoWheel(MirrorError):
    """The package is allowed, but the mirror has no wheel of it (or of that version) for the
    engine. The fix is an operator's: `sandgate mirror sync`.

    Attributes:
        package: The normalized name.
        engine: The engine asked for.
        version: The version asked for, or `None` for any.
    """

    def __init__(self, message: str, *, package: str, engine: str, version: str | None) -> None:
        super().__init__(message)
        self.package = package
        self.engine = engine
        self.version = version


class MirrorMissing(MirrorError):
    """The mirror directory holds no readable `lock.json`.

    Attributes:
        mirror_dir: The directory looked in.
    """

    def __init__(self, message: str, *, mirror_dir: Path) -> None:
        super().__init__(message)
        self.mirror_dir = mirror_dir


class HashMismatch(MirrorError):
    """A file's sha256 is not the one expected.

    Attributes:
        file: The file that was hashed.
        expected: The sha256 (hex) it should have.
        actual: The sha256 (hex) it has.
    """

    def __init__(self, *, file: Path, expected: str, actual: str) -> None:
        super().__init__(
            f"{file.name}: sha256 expected {expected}, got {actual}; the mirror copy was "
            "changed or corrupted: run `sandgate mirror verify` and `sandgate mirror sync`"
        )
        self.file = file
        self.expected = expected
        self.actual = actual


class UnsafeWheel(MirrorError):
    """A wheel's archive was refused while unpacking; nothing of it was installed.

    Attributes:
        file: The wheel.
        member: The archive member at fault (`""` for the archive as a whole).
        reason: Why, in words.
    """

    def __init__(self, *, file: Path, member: str, reason: str) -> None:
        where = f" member {member!r}" if member else ""
        super().__init__(f"{file.name}{where} refused: {reason}; nothing was installed")
        self.file = file
        self.member = member
        self.reason = reason


class InstallFailed(MirrorError):
    """The site folder could not be written; what was already there is left as it was, or
    (if moving files into place failed halfway) the record is not updated.

    Attributes:
        package: The package being installed.
        site_dir: The site folder.
    """

    def __init__(self, message: str, *, package: str, site_dir: Path) -> None:
        super().__init__(message)
        self.package = package
        self.site_dir = site_dir


class IndexUnavailable(MirrorError):
    """The upstream package index could not be read.

    Attributes:
        url: The address that failed (credentials removed).
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class MirrorBusy(MirrorError):
    """Another process or thread held a mirror or site lock past the wait limit.

    Attributes:
        folder: The locked folder (a mirror or a site folder).
        waited_s: Seconds waited.
    """

    def __init__(self, *, folder: Path, waited_s: float) -> None:
        super().__init__(
            f"{folder} stayed locked for {waited_s:.0f} s by another sync or install; "
            "retry when it has finished"
        )
        self.folder = folder
        self.waited_s = waited_s
