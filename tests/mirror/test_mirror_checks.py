"""check_allowed and the "did you mean" suggestions, on a hand-made lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.packages.mirror import (
    Lock,
    LockedPackage,
    NotAllowed,
    NoWheel,
    VersionNotAllowed,
    allowlist_from_mapping,
    check_allowed,
    parse_requirement,
    suggest,
)
from runner.packages.mirror._checks import damerau_levenshtein

ALLOWED = ["requests", "numpy", "six", "python-dateutil", "attrs", "pandas"]


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("reqeusts", "requests"),
        ("request", "requests"),
        ("requestss", "requests"),
        ("sixx", "six"),
        ("nunpy", "numpy"),
        ("python-dateutils", "python-dateutil"),
        ("pythondateutil", "python-dateutil"),
        ("atrs", "attrs"),
        ("panda", "pandas"),
        ("tensorflow", None),
        ("x", None),
    ],
)
def test_suggest(asked: str, expected: str | None) -> None:
    assert suggest(asked, ALLOWED) == expected


def test_damerau_levenshtein_counts_a_swap_as_one() -> None:
    assert damerau_levenshtein("reqeusts", "requests") == 1
    assert damerau_levenshtein("six", "six") == 0
    assert damerau_levenshtein("", "abc") == 3
    assert damerau_levenshtein("kitten", "sitting") == 3


def _lock(tmp_path: Path) -> Lock:
    def pkg(
        name: str,
        version: str,
        engines: tuple[str, ...],
        *,
        direct: bool = True,
        deps: tuple[str, ...] = (),
    ) -> LockedPackage:
        return LockedPackage(
            name=name,
            version=version,
            filename=f"{name}-{version}-py3-none-any.whl",
            sha256="0" * 64,
            size=1,
            engines=engines,
            dependencies=deps,
            direct=direct,
        )

    return Lock(
        packages=(
            pkg("requests", "2.32.0", ("wasm", "container"), deps=("idna",)),
            pkg("idna", "3.7", ("wasm", "container"), direct=False),
            pkg("six", "1.17.0", ("container",)),
        ),
        index_url="https://example.invalid/simple/",
        mirror_dir=tmp_path,
    )


ALLOW = allowlist_from_mapping(
    {"packages": {"requests": ">=2.30,<3", "six": "*"}, "pyodide": {"tabulate": "*"}}
)


def test_allowed_returns_the_locked_wheel(tmp_path: Path) -> None:
    found = check_allowed(parse_requirement("requests==2.32.0"), ALLOW, _lock(tmp_path), "wasm")
    assert (found.name, found.version) == ("requests", "2.32.0")


def test_typosquat_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(NotAllowed) as caught:
        check_allowed(parse_requirement("reqeusts"), ALLOW, _lock(tmp_path), "wasm")
    assert (caught.value.package, caught.value.engine, caught.value.suggestion) == (
        "reqeusts",
        "wasm",
        "requests",
    )


def test_unknown_package_without_a_near_name(tmp_path: Path) -> None:
    with pytest.raises(NotAllowed) as caught:
        check_allowed(parse_requirement("tensorflow"), ALLOW, _lock(tmp_path), "wasm")
    assert caught.value.suggestion is None
    assert "allow-list" in str(caught.value)


def test_dependency_only_and_other_engine(tmp_path: Path) -> None:
    with pytest.raises(NotAllowed) as dep:
        check_allowed(parse_requirement("idna"), ALLOW, _lock(tmp_path), "wasm")
    assert "only as a dependency" in str(dep.value)
    with pytest.raises(NotAllowed) as other:
        check_allowed(parse_requirement("tabulate"), ALLOW, _lock(tmp_path), "wasm")
    assert "only on pyodide" in str(other.value)


def test_version_outside_the_range(tmp_path: Path) -> None:
    with pytest.raises(VersionNotAllowed) as caught:
        check_allowed(parse_requirement("requests==2.0"), ALLOW, _lock(tmp_path), "wasm")
    assert isinstance(caught.value, NotAllowed)
    assert (caught.value.requested, caught.value.allowed) == ("2.0", "<3,>=2.30")


def test_allowed_but_not_mirrored_for_the_engine(tmp_path: Path) -> None:
    with pytest.raises(NoWheel) as caught:
        check_allowed(parse_requirement("six"), ALLOW, _lock(tmp_path), "wasm")
    assert (caught.value.package, caught.value.engine, caught.value.version) == (
        "six",
        "wasm",
        None,
    )
    assert "sandgate mirror sync" in str(caught.value)
