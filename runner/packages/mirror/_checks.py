"""Check a request against the allow-list and the lock, with "did you mean" for near-misses."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from packaging.version import Version

from ._allowlist import AllowList
from ._errors import NotAllowed, NoWheel, VersionNotAllowed
from ._lock import Lock, LockedPackage
from ._requirement import Requested

MAX_SUGGEST_DISTANCE = 2
"""Largest Damerau-Levenshtein distance (edits) at which a name is suggested."""
MIN_SUGGEST_RATIO = 0.8
"""Smallest `difflib` similarity at which a longer name is suggested."""


def damerau_levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) turning `a` into `b`."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(rows[i - 1][j] + 1, row[j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[i - 2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """The allow-listed name closest to `name` (a typo or typosquat), or `None`.

    Names within `MAX_SUGGEST_DISTANCE` edits (one edit per three letters of the shorter
    name, at least one), or with a `difflib` ratio of at least `MIN_SUGGEST_RATIO`, qualify;
    the nearest wins, ties by ratio, then alphabetically.
    """
    best: tuple[int, float, str] | None = None
    squashed = name.replace("-", "")
    for candidate in set(candidates):
        if candidate == name:
            continue
        distance = min(
            damerau_levenshtein(name, candidate),
            damerau_levenshtein(squashed, candidate.replace("-", "")),
        )
        ratio = difflib.SequenceMatcher(None, name, candidate).ratio()
        shorter = min(len(name), len(candidate))
        limit = min(MAX_SUGGEST_DISTANCE, max(1, shorter // 3))
        if distance > limit and ratio < MIN_SUGGEST_RATIO:
            continue
        key = (distance, -ratio, candidate)
        if best is None or key < best:
            best = key
    return best[2] if best is not None else None


def check_allowed(
    requested: Requested, allowlist: AllowList, lock: Lock, engine: str
) -> LockedPackage:
    """Decide whether `requested` may be installed on `engine`, and which wheel serves it.

    Args:
        requested: The parsed request.
        allowlist: The operator's allow-list.
        lock: The mirror's lock.
        engine: The engine of the session.

    Returns:
        The locked wheel to install (its dependencies come from `Lock.closure`).

    Raises:
        NotAllowed: Not on the allow-list for `engine` (with a suggestion for near-misses).
        VersionNotAllowed: The pin lies outside the allowed range.
        NoWheel: Allowed, but the mirror has no wheel (of that version) for `engine`.
    """
    name = requested.name
    entry = allowlist.find(name, engine)
    if entry is None:
        allowed_names = allowlist.for_engine(engine)
        hint = suggest(name, allowed_names)
        elsewhere = allowlist.engines_for(name)
        if elsewhere:
            why = f"it is allowed only on {', '.join(elsewhere)}, not on {engine}"
        elif lock.find(name, engine) is not None:
            why = "it is mirrored only as a dependency of an allowed package, not by itself"
        else:
            why = f"it is not on the operator's allow-list for {engine}"
        tail = (
            f"; did you mean `{hint}`?"
            if hint is not None
            else "; ask the operator to add it to the allow-list and run `sandgate mirror sync`"
        )
        raise NotAllowed(
            f"package_name {name!r} refused: {why}{tail}",
            package=name,
            engine=engine,
            suggestion=hint,
        )
    if requested.pin is not None and not entry.specifier.contains(
        Version(requested.pin), prereleases=True
    ):
        allowed = str(entry.specifier) or "any version"
        raise VersionNotAllowed(
            f"package_name {str(requested)!r} refused: the allow-list permits {name} {allowed} "
            f"on {engine}, not {requested.pin}; ask without a pin for the mirrored version",
            package=name,
            engine=engine,
            requested=requested.pin,
            allowed=str(entry.specifier),
        )
    locked = lock.find(name, engine)
    if locked is None:
        raise NoWheel(
            f"{name} is allowed on {engine} but the mirror at {lock.mirror_dir} has no wheel "
            "of it for that engine; the operator should run `sandgate mirror sync` (and check "
            "its failures)",
            package=name,
            engine=engine,
            version=requested.pin,
        )
    if requested.pin is not None and Version(requested.pin) != Version(locked.version):
        raise NoWheel(
            f"{name}=={requested.pin} is allowed on {engine} but the mirror holds "
            f"{name}=={locked.version}; ask for {name} (or {name}=={locked.version}), or pin "
            f"=={requested.pin} in the allow-list and run `sandgate mirror sync`",
            package=name,
            engine=engine,
            version=requested.pin,
        )
    return locked
