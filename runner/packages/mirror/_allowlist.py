"""Load the operator's allow-list: which packages (and version ranges) each engine may install.

The file is TOML (`.toml`) or YAML (`.yaml`, `.yml`)::

    [packages]          # every engine
    six = "*"
    attrs = ">=23,<26"

    [container]         # this engine only; a name here overrides [packages] for it
    numpy = ">=2"

Sections: `packages`, `wasm`, `pyodide`, `container`; any other key is an error. A value is a
PEP 440 specifier; `"*"` or `""` means any version.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from ._errors import AllowListError

EngineName = Literal["wasm", "pyodide", "container"]
ENGINES: Final[tuple[EngineName, ...]] = get_args(EngineName)
"""Every engine a mirror can serve."""

_COMMON = "packages"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True, slots=True)
class AllowedPackage:
    """One allow-list entry.

    Attributes:
        name: PEP 503-normalized name.
        specifier: Allowed versions (empty means any).
        engines: The engines it is allowed for.
    """

    name: str
    specifier: SpecifierSet
    engines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AllowList:
    """The packages each engine may install.

    Attributes:
        packages: Every entry; a name appears at most once per engine.
        path: The file it was loaded from, if any.
    """

    packages: tuple[AllowedPackage, ...]
    path: Path | None = None

    def for_engine(self, engine: str) -> dict[str, SpecifierSet]:
        """Name → allowed specifier for one engine."""
        return {p.name: p.specifier for p in self.packages if engine in p.engines}

    def find(self, name: str, engine: str) -> AllowedPackage | None:
        """The entry allowing `name` (normalized) on `engine`, or `None`."""
        for entry in self.packages:
            if entry.name == name and engine in entry.engines:
                return entry
        return None

    def engines_for(self, name: str) -> tuple[str, ...]:
        """The engines `name` (normalized) is allowed on, in `ENGINES` order."""
        allowed = {e for p in self.packages if p.name == name for e in p.engines}
        return tuple(e for e in ENGINES if e in allowed)


def allowlist_from_mapping(data: Mapping[str, object], *, path: Path | None = None) -> AllowList:
    """Build an `AllowList` from parsed TOML/YAML data (see the module docstring).

    Args:
        data: Section name → {package name → specifier string}.
        path: The file the data came from, named in errors.

    Returns:
        The allow-list.

    Raises:
        AllowListError: A section, name or specifier is invalid; the error names the key.
    """
    where = path if path is not None else Path("<allow-list>")
    sections = (_COMMON, *ENGINES)
    if not isinstance(data, Mapping):
        raise AllowListError(
            f"{where}: expected a mapping of sections {sections}, got {type(data).__name__}",
            path=where,
        )
    for key in data:
        if key not in sections:
            raise AllowListError(
                f"{where}: unknown section {key!r}; expected one of {', '.join(sections)}",
                path=where,
                key=str(key),
            )
    parsed: dict[str, dict[str, SpecifierSet]] = {}
    for section in sections:
        parsed[section] = _section(data.get(section), section, where)
    entries: list[AllowedPackage] = []
    for name, spec in parsed[_COMMON].items():
        engines = tuple(e for e in ENGINES if name not in parsed[e])
        if engines:
            entries.append(AllowedPackage(name, spec, engines))
    for engine in ENGINES:
        for name, spec in parsed[engine].items():
            entries.append(AllowedPackage(name, spec, (engine,)))
    entries.sort(key=lambda p: (p.name, ENGINES.index(p.engines[0])))
    return AllowList(packages=tuple(entries), path=path)


def load_allowlist(path: str | Path) -> AllowList:
    """Read an allow-list file (TOML or YAML, chosen by the file's suffix).

    Args:
        path: The file.

    Returns:
        The allow-list, names normalized.

    Raises:
        AllowListError: The file is missing, unparsable or breaks the schema.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AllowListError(f"{file}: cannot read the allow-list: {exc}", path=file) from exc
    suffix = file.suffix.lower()
    data: object
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
            data = {} if data is None else data
        else:
            raise AllowListError(
                f"{file}: unknown allow-list format {suffix!r}; expected .toml, .yaml or .yml",
                path=file,
            )
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise AllowListError(f"{file}: not valid {suffix[1:].upper()}: {exc}", path=file) from exc
    if not isinstance(data, Mapping):
        raise AllowListError(
            f"{file}: expected sections of package names, got {type(data).__name__}", path=file
        )
    return allowlist_from_mapping(data, path=file)


def _section(value: object, section: str, where: Path) -> dict[str, SpecifierSet]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AllowListError(
            f"{where}: [{section}] must map package names to version specifiers "
            f'(six = "*"), got {type(value).__name__}',
            path=where,
            key=section,
        )
    out: dict[str, SpecifierSet] = {}
    for raw_name, raw_spec in value.items():
        key = f"{section}.{raw_name}"
        name = str(raw_name)
        if (
            not name
            or not set(name) <= _NAME_CHARS
            or not name[0].isalnum()
            or not name[-1].isalnum()
        ):
            raise AllowListError(
                f"{where}: {key}: {name!r} is not a valid package name (letters, digits, "
                "`.`, `_`, `-`)",
                path=where,
                key=key,
            )
        normalized = canonicalize_name(name)
        if normalized in out:
            raise AllowListError(
                f"{where}: {key}: {normalized!r} is listed twice in [{section}] (names are "
                "compared PEP 503-normalized); keep one",
                path=where,
                key=key,
            )
        if not isinstance(raw_spec, str):
            raise AllowListError(
                f'{where}: {key}: expected a version specifier string such as "*" or '
                f'">=1,<2", got {type(raw_spec).__name__} {raw_spec!r}',
                path=where,
                key=key,
            )
        text = raw_spec.strip()
        try:
            out[normalized] = SpecifierSet("" if text in ("", "*") else text)
        except InvalidSpecifier:
            hint = f'; for one version write "=={text}"' if text[:1].isdigit() else ""
            raise AllowListError(
                f'{where}: {key}: {raw_spec!r} is not a PEP 440 specifier (expected "*", '
                f'"==1.2.3" or ">=1,<2"){hint}',
                path=where,
                key=key,
            ) from None
    return out
