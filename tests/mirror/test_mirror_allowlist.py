"""load_allowlist: TOML or YAML, names normalized, engine sections, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from runner.packages.mirror import AllowListError, load_allowlist

TOML = """\
[packages]
six = "*"
attrs = ">=23,<26"
Python_Dateutil = ""

[wasm]
tabulate = "==0.9.0"

[container]
attrs = ">=24"
"""


def test_toml_sections_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "allow.toml"
    path.write_text(TOML)
    allow = load_allowlist(path)
    assert allow.path == path
    assert allow.for_engine("wasm") == {
        "attrs": SpecifierSet(">=23,<26"),
        "python-dateutil": SpecifierSet(""),
        "six": SpecifierSet(""),
        "tabulate": SpecifierSet("==0.9.0"),
    }
    assert allow.for_engine("container")["attrs"] == SpecifierSet(">=24")
    assert "tabulate" not in allow.for_engine("pyodide")
    assert allow.engines_for("tabulate") == ("wasm",)
    assert allow.engines_for("attrs") == ("wasm", "pyodide", "container")
    entry = allow.find("python-dateutil", "pyodide")
    assert entry is not None and entry.engines == ("wasm", "pyodide", "container")


def test_yaml_means_the_same(tmp_path: Path) -> None:
    toml = tmp_path / "allow.toml"
    toml.write_text(TOML)
    yaml = tmp_path / "allow.yaml"
    yaml.write_text(
        "packages:\n  six: '*'\n  attrs: '>=23,<26'\n  Python_Dateutil: ''\n"
        "wasm:\n  tabulate: '==0.9.0'\ncontainer:\n  attrs: '>=24'\n"
    )
    assert load_allowlist(yaml).packages == load_allowlist(toml).packages


def test_empty_yaml_is_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "allow.yml"
    path.write_text("")
    assert load_allowlist(path).packages == ()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[pakages]\nsix = "*"\n', "pakages"),
        ('[packages]\nsix = ">=1,,<"\n', "packages.six"),
        ('[packages]\nsix = "1.16.0"\n', "packages.six"),
        ("[packages]\nsix = 1\n", "packages.six"),
        ('[packages]\n"six/../x" = "*"\n', "packages.six/../x"),
        ('[packages]\nSix = "*"\nsix = "*"\n', "packages.six"),
        ('packages = ["six"]\n', "packages"),
        ('[wasm]\n"-e" = "*"\n', "wasm.-e"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "allow.toml"
    path.write_text(text)
    with pytest.raises(AllowListError) as caught:
        load_allowlist(path)
    assert caught.value.key == key
    assert caught.value.path == path
    assert str(path) in str(caught.value)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(AllowListError) as missing:
        load_allowlist(tmp_path / "nope.toml")
    assert missing.value.key == ""
    bad = tmp_path / "allow.toml"
    bad.write_text("[packages\n")
    with pytest.raises(AllowListError):
        load_allowlist(bad)
    other = tmp_path / "allow.ini"
    other.write_text("")
    with pytest.raises(AllowListError) as suffix:
        load_allowlist(other)
    assert ".ini" in str(suffix.value)
    scalar = tmp_path / "allow.yaml"
    scalar.write_text("- six\n")
    with pytest.raises(AllowListError):
        load_allowlist(scalar)
