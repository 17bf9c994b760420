"""PEP 503 simple-index HTML: read an upstream project page, write the mirror's own index."""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

if TYPE_CHECKING:
    from ._lock import LockedPackage


@dataclass(frozen=True, slots=True)
class IndexFile:
    """One file an upstream project page lists.

    Attributes:
        filename: The file name (`six-1.17.0-py2.py3-none-any.whl`).
        url: Absolute address.
        sha256: The hash the index gives, or `None`.
        requires_python: The index's `Requires-Python`, or `None`.
        yanked: Whether the release was yanked (PEP 592).
    """

    filename: str
    url: str
    sha256: str | None
    requires_python: str | None
    yanked: bool


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = dict(attrs)
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.anchors.append((self._open, "".join(self._text).strip()))
            self._open = None


def parse_simple_html(text: str, base: str) -> list[IndexFile]:
    """The files a PEP 503 project page lists.

    Args:
        text: The page.
        base: The page's address, for relative links.

    Returns:
        One entry per link; the hash comes from a `#sha256=` fragment.
    """
    parser = _Anchors()
    parser.feed(text)
    parser.close()
    out: list[IndexFile] = []
    for attrs, label in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url, fragment = urldefrag(urljoin(base, href))
        name = label or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        algo, _, value = fragment.partition("=")
        out.append(
            IndexFile(
                filename=name,
                url=url,
                sha256=value.lower() if algo == "sha256" and value else None,
                requires_python=attrs.get("data-requires-python"),
                yanked="data-yanked" in attrs,
            )
        )
    return out


_PAGE = """<!DOCTYPE html>
<html>
  <head><meta name="pypi:repository-version" content="1.0"><title>{title}</title></head>
  <body>
{links}
  </body>
</html>
"""


def write_simple_index(mirror_dir: Path, packages: Iterable[LockedPackage]) -> None:
    """Write `simple/index.html` and `simple/<name>/index.html` for the locked wheels.

    Links point at `../../files/<wheel>#sha256=<hex>`; pages of projects no longer locked are
    removed.

    Args:
        mirror_dir: The mirror directory.
        packages: The locked packages.
    """
    simple = mirror_dir / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    by_name: dict[str, dict[str, LockedPackage]] = {}
    for pkg in packages:
        by_name.setdefault(pkg.name, {})[pkg.filename] = pkg
    for name, files in sorted(by_name.items()):
        links = []
        for filename, pkg in sorted(files.items()):
            href = html.escape(f"../../files/{filename}#sha256={pkg.sha256}")
            rp = (
                f' data-requires-python="{html.escape(pkg.requires_python)}"'
                if pkg.requires_python
                else ""
            )
            links.append(f'    <a href="{href}"{rp}>{html.escape(filename)}</a><br>')
        _write(
            simple / name / "index.html",
            _PAGE.format(title=f"Links for {html.escape(name)}", links="\n".join(links)),
        )
    root_links = [
        f'    <a href="{html.escape(n)}/">{html.escape(n)}</a><br>' for n in sorted(by_name)
    ]
    _write(simple / "index.html", _PAGE.format(title="Simple index", links="\n".join(root_links)))
    for child in simple.iterdir():
        if child.is_dir() and not child.is_symlink() and child.name not in by_name:
            (child / "index.html").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                child.rmdir()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
