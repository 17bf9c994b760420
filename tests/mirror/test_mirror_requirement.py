"""parse_requirement: a plain name with an optional exact pin, everything else refused."""

from __future__ import annotations

import pytest

from runner.packages.mirror import (
    Requested,
    RequirementRefused,
    parse_requirement,
    parse_requirement_list,
)

REFUSED = [
    ("--index-url=http://x y", "option"),
    ("-e .", "option"),
    ("-r requirements.txt", "option"),
    ("-six", "option"),
    ("git+https://github.com/x/y", "vcs"),
    ("hg+https://example.org/repo", "vcs"),
    ("../x.whl", "path"),
    ("./x", "path"),
    ("/x", "path"),
    ("C:\\x\\six.whl", "path"),
    ("six.whl", "archive"),
    ("six-1.0.tar.gz", "archive"),
    ("six.zip", "archive"),
    ("https://x/y.whl", "url"),
    ("http://x/y", "url"),
    ("file:///tmp/six.whl", "url"),
    ("file:six", "url"),
    ("six @ https://x/six.whl", "url"),
    ("six@git", "direct_reference"),
    ("six; python_version<'3'", "whitespace"),
    ("six;python_version<'3'", "markers"),
    ("six>=1", "range"),
    ("six~=1.0", "range"),
    ("six!=1.0", "range"),
    ("six==1.*", "range"),
    ("six===1.0", "range"),
    ("six==1.0,<2", "range"),
    ("six[extra]", "extras"),
    ("six[extra];python_version>'3'", "markers"),
    ("", "empty"),
    ("   ", "empty"),
    ("six requests", "whitespace"),
    ("six\tattrs", "whitespace"),
    ("s\u00efx", "name"),
    ("six_", "name"),
    ("x" * 300, "too_long"),
    ("six==not-a-version", "version"),
]


@pytest.mark.parametrize(("text", "kind"), REFUSED)
def test_refused(text: str, kind: str) -> None:
    with pytest.raises(RequirementRefused) as caught:
        parse_requirement(text)
    error = caught.value
    assert error.kind == kind
    assert error.argument == "package_name"
    assert error.requested == text
    assert error.reason


def test_refusal_names_the_argument_and_suggests_the_name() -> None:
    with pytest.raises(RequirementRefused) as caught:
        parse_requirement("six>=1", argument="package")
    assert caught.value.argument == "package"
    assert str(caught.value).startswith("package='six>=1' refused")
    assert caught.value.suggestion is not None
    assert "`six`" in caught.value.suggestion


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("six", Requested("six", None)),
        ("  six  ", Requested("six", None)),
        ("six==1.16.0", Requested("six", "1.16.0")),
        ("Python_Dateutil==2.9.0.post0", Requested("python-dateutil", "2.9.0.post0")),
        ("zope.interface", Requested("zope-interface", None)),
        ("six==01.16", Requested("six", "1.16")),
        ("a", Requested("a", None)),
    ],
)
def test_accepted(text: str, expected: Requested) -> None:
    assert parse_requirement(text) == expected


def test_str_round_trips() -> None:
    assert str(parse_requirement("six==1.16.0")) == "six==1.16.0"
    assert str(parse_requirement("six")) == "six"


def test_list_splits_on_whitespace_and_refuses_any_bad_item() -> None:
    assert parse_requirement_list("six  attrs\nsix") == (Requested("six"), Requested("attrs"))
    with pytest.raises(RequirementRefused) as caught:
        parse_requirement_list("six ../evil.whl")
    assert caught.value.requested == "../evil.whl"
    assert caught.value.argument == "package"
    with pytest.raises(RequirementRefused):
        parse_requirement_list("  ")
