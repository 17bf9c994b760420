"""Parse what an agent asks to install: a plain package name with an optional exact pin.

Everything else (URLs, paths, archives, VCS references, options, extras, markers, version
ranges) is refused here, before any installer sees the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ._errors import RequirementRefused

MAX_REQUIREMENT_CHARS = 200
"""Longest requirement text accepted (characters)."""

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PLAIN = re.compile(rf"(?P<name>{_NAME})(?:==(?P<pin>[A-Za-z0-9.+!_-]+))?", re.ASCII)
_LEADING_NAME = re.compile(_NAME, re.ASCII)
_VCS = ("git+", "hg+", "svn+", "bzr+")
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".egg")
_WHY_MIRROR = "packages come only from the operator's mirror, by name"
_ASK_OPERATOR = (
    "ask the operator to add the package to the allow-list and run `sandgate mirror sync`, "
    "then send its name"
)


@dataclass(frozen=True, slots=True)
class Requested:
    """A requirement that passed `parse_requirement`.

    Attributes:
        name: The PEP 503-normalized name (`python-dateutil`).
        pin: The exact version asked for (normalized, `1.16.0`), or `None` for the locked one.
    """

    name: str
    pin: str | None = None

    def __str__(self) -> str:
        return self.name if self.pin is None else f"{self.name}=={self.pin}"


def parse_requirement(text: str, *, argument: str = "package_name") -> Requested:
    """Accept `name` or `name==version`, refuse anything else.

    Args:
        text: The requirement as the caller sent it; surrounding whitespace is ignored.
        argument: The tool argument it came in, named in the refusal.

    Returns:
        The normalized name and pin.

    Raises:
        RequirementRefused: The text is not a plain name with an optional exact pin.
    """

    def refuse(kind: str, reason: str, suggestion: str | None = None) -> RequirementRefused:
        return RequirementRefused(
            argument=argument, requested=text, reason=reason, suggestion=suggestion, kind=kind
        )

    if not isinstance(text, str):
        raise refuse("name", f"expected a string, got {type(text).__name__}")
    stripped = text.strip()
    hint = _use(_name_hint(stripped))
    if not stripped:
        raise refuse("empty", "it is empty; expected a name such as `six` or `six==1.16.0`")
    if len(stripped) > MAX_REQUIREMENT_CHARS:
        raise refuse(
            "too_long",
            f"it is {len(stripped)} characters long, more than {MAX_REQUIREMENT_CHARS}",
        )
    lowered = stripped.lower()
    checks: tuple[tuple[bool, str, str, str | None], ...] = (
        (
            stripped.startswith("-"),
            "option",
            "options (anything starting with `-`, such as `-e` or `--index-url`) are not "
            f"accepted; {_WHY_MIRROR}",
            "send a package name such as `six`",
        ),
        (
            lowered.startswith(_VCS),
            "vcs",
            f"VCS references are not accepted; {_WHY_MIRROR}",
            _ASK_OPERATOR,
        ),
        (
            "://" in stripped or lowered.startswith("file:"),
            "url",
            f"URLs are not accepted; {_WHY_MIRROR}",
            _ASK_OPERATOR,
        ),
        (
            any(ch.isspace() for ch in stripped),
            "whitespace",
            "whitespace inside a requirement is not accepted; send one package per call",
            hint,
        ),
        (
            "/" in stripped or "\\" in stripped or stripped.startswith((".", "~")),
            "path",
            f"paths are not accepted; {_WHY_MIRROR}",
            _ASK_OPERATOR,
        ),
        (
            lowered.endswith(_ARCHIVES),
            "archive",
            f"archive files are not accepted; {_WHY_MIRROR}",
            _ASK_OPERATOR,
        ),
        (
            "@" in stripped,
            "direct_reference",
            f"direct references (`name @ url`) are not accepted; {_WHY_MIRROR}",
            hint,
        ),
        (
            ";" in stripped,
            "markers",
            "environment markers (`; ...`) are not accepted; the mirror already holds the "
            "wheel for this engine",
            hint,
        ),
        (
            "[" in stripped or "]" in stripped,
            "extras",
            "extras (`name[extra]`) are not accepted; the package is installed with its "
            "locked dependencies",
            hint,
        ),
    )
    for failed, kind, reason, suggestion in checks:
        if failed:
            raise refuse(kind, reason, suggestion)
    match = _PLAIN.fullmatch(stripped)
    if match is None:
        if re.search(r"[<>!~=,]", stripped):
            raise refuse(
                "range", "only an exact pin `name==version` is accepted, not a version range", hint
            )
        raise refuse(
            "name",
            "not a valid package name (letters, digits, `.`, `_`, `-`; starting and ending "
            "with a letter or digit)",
        )
    pin = match.group("pin")
    if pin is not None:
        try:
            pin = str(Version(pin))
        except InvalidVersion:
            raise refuse("version", f"{pin!r} is not a valid version", hint) from None
    return Requested(name=canonicalize_name(match.group("name")), pin=pin)


def parse_requirement_list(text: str, *, argument: str = "package") -> tuple[Requested, ...]:
    """Parse several whitespace-separated requirements (the Pyodide tool's `package` argument).

    Args:
        text: Requirements separated by spaces, tabs or newlines.
        argument: The tool argument it came in, named in a refusal.

    Returns:
        Each requirement, in order, without duplicates.

    Raises:
        RequirementRefused: The list is empty, or one item is refused (the first is named).
    """
    items = text.split() if isinstance(text, str) else []
    if not items:
        raise RequirementRefused(
            argument=argument,
            requested=str(text),
            reason="no package named; expected names such as `six attrs`",
            kind="empty",
        )
    seen: dict[Requested, None] = {}
    for item in items:
        seen[parse_requirement(item, argument=argument)] = None
    return tuple(seen)


def _name_hint(text: str) -> str | None:
    match = _LEADING_NAME.match(text)
    return match.group(0) if match else None


def _use(name: str | None) -> str | None:
    if name is None:
        return None
    return f"send `{name}` (the mirror's locked version) or `{name}==<version>`"
