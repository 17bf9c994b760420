"""Read the upstream package index (PEP 691 JSON or PEP 503 HTML) and download its wheels.

Only `sandgate mirror sync` uses this module; nothing at install time does. The index is the
one `--index-url` names, else pip's configured `index-url` (`PIP_INDEX_URL`, pip's config
files), else PyPI. pip's `extra-index-url` and `find-links` are ignored on purpose: one
index per mirror leaves no room for dependency confusion.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from ._errors import HashMismatch, IndexUnavailable
from ._simple import IndexFile, parse_simple_html

DEFAULT_INDEX_URL = "https://pypi.org/simple/"
HTTP_TIMEOUT_S = 60.0
PIP_CONFIG_TIMEOUT_S = 30.0
MAX_INDEX_PAGE_BYTES = 64 * 1024 * 1024
MAX_WHEEL_BYTES = 2 * 1024 * 1024 * 1024
_CHUNK_BYTES = 1024 * 1024
_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
_JSON_TYPE = "application/vnd.pypi.simple.v1+json"


class _Response(Protocol):
    headers: Message

    def read(self, amt: int, /) -> bytes: ...
    def geturl(self) -> str: ...
    def __enter__(self) -> _Response: ...
    def __exit__(self, *exc: object) -> None: ...


def redact(url: str) -> str:
    """`url` with any user name and password removed (for messages and the lock)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def pip_config() -> dict[str, str]:
    """pip's effective configuration (`pip config list`), key → value; empty if pip is absent."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=PIP_CONFIG_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            out[key.strip()] = value[1:-1]
    return out


def configured_index_url(config: dict[str, str] | None = None) -> str:
    """The index pip would use: `PIP_INDEX_URL`, then pip's `download.`/`global.index-url`."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    cfg = pip_config() if config is None else config
    for key in (":env:.index-url", "download.index-url", "global.index-url"):
        if cfg.get(key):
            return cfg[key].split()[0]
    return DEFAULT_INDEX_URL


class Index:
    """A client of one simple index, with pip's certificate bundle and the environment's proxy.

    Args:
        url: The index root (`https://pypi.org/simple/`); credentials in it are sent to its
            host only.
        cafile: A CA bundle (pip's `cert`), or `None` for the system's.
    """

    def __init__(self, url: str, *, cafile: str | None = None) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.display_url = redact(self.url)
        parts = urlsplit(self.url)
        self._host = parts.hostname
        self._auth: str | None = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        context = ssl.create_default_context(cafile=cafile if cafile else None)
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

    @classmethod
    def from_pip(cls, url: str | None = None) -> Index:
        """The explicit `url`, else pip's configured index, with pip's certificate bundle."""
        if url and urlsplit(url).scheme == "file":
            return cls(url)
        cfg = pip_config()
        cafile = os.environ.get("PIP_CERT") or cfg.get(":env:.cert") or cfg.get("global.cert")
        if cafile and not Path(cafile).is_file():
            cafile = None
        return cls(url or configured_index_url(cfg), cafile=cafile)

    def project_files(self, name: str) -> list[IndexFile] | None:
        """The files of project `name` (normalized), or `None` if the index does not have it.

        Raises:
            IndexUnavailable: The index could not be read.
        """
        page = urljoin(self.url, f"{name}/")
        if urlsplit(page).scheme == "file":
            return self._local_project(page)
        try:
            with self._open(page, accept=_ACCEPT) as response:
                body = response.read(MAX_INDEX_PAGE_BYTES + 1)
                final_url: str = response.geturl()
                ctype = response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                return None
            raise IndexUnavailable(
                f"{redact(page)}: HTTP {exc.code} {exc.reason}; check --index-url and that "
                "the index is up",
                url=redact(page),
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise IndexUnavailable(
                f"{redact(page)}: cannot reach the index ({exc}); check the network, proxy "
                "and --index-url",
                url=redact(page),
            ) from exc
        if len(body) > MAX_INDEX_PAGE_BYTES:
            raise IndexUnavailable(
                f"{redact(page)}: page larger than {MAX_INDEX_PAGE_BYTES} bytes", url=redact(page)
            )
        if ctype == _JSON_TYPE:
            return _parse_json(body, final_url)
        return parse_simple_html(body.decode("utf-8", "replace"), final_url)

    def download(
        self, file: IndexFile, dest: Path, *, progress: Callable[[str], None]
    ) -> tuple[str, int]:
        """Download `file` to `dest` (atomically), checking the index's hash if it gave one.

        Returns:
            The sha256 (hex) and size in bytes.

        Raises:
            IndexUnavailable: The download failed.
            HashMismatch: The bytes do not have the index's sha256.
        """
        part = dest.with_name(f".{dest.name}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with self._open(file.url, accept="*/*") as response, part.open("wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                next_report = total // 4 if total > 4 * _CHUNK_BYTES else 0
                while chunk := response.read(_CHUNK_BYTES):
                    size += len(chunk)
                    if size > MAX_WHEEL_BYTES:
                        raise IndexUnavailable(
                            f"{file.filename}: larger than {MAX_WHEEL_BYTES} bytes; refused",
                            url=redact(file.url),
                        )
                    digest.update(chunk)
                    out.write(chunk)
                    if next_report and size >= next_report:
                        progress(f"  {file.filename}: {size * 100 // total}% of {total} bytes")
                        next_report += total // 4
        except (urllib.error.URLError, OSError) as exc:
            part.unlink(missing_ok=True)
            raise IndexUnavailable(
                f"{file.filename}: download from {redact(file.url)} failed: {exc}",
                url=redact(file.url),
            ) from exc
        except IndexUnavailable:
            part.unlink(missing_ok=True)
            raise
        actual = digest.hexdigest()
        if file.sha256 is not None and actual != file.sha256.lower():
            part.unlink(missing_ok=True)
            raise HashMismatch(file=dest, expected=file.sha256.lower(), actual=actual)
        os.replace(part, dest)
        return actual, size

    def _open(self, url: str, *, accept: str) -> _Response:
        headers = {"Accept": accept, "User-Agent": "sandgate-mirror"}
        if self._auth is not None and urlsplit(url).hostname == self._host:
            headers["Authorization"] = self._auth
        plain = redact(url) if self._auth is not None else url
        request = urllib.request.Request(plain, headers=headers)
        response: _Response = self._opener.open(request, timeout=HTTP_TIMEOUT_S)
        return response

    def _local_project(self, page: str) -> list[IndexFile] | None:
        folder = Path(urllib.request.url2pathname(urlsplit(page).path))
        html = folder / "index.html"
        if not html.is_file():
            return None
        try:
            text = html.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise IndexUnavailable(f"{html}: cannot read: {exc}", url=page) from exc
        return parse_simple_html(text, html.as_uri())


def _parse_json(body: bytes, base: str) -> list[IndexFile]:
    try:
        data = json.loads(body)
        files = data["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexUnavailable(
            f"{redact(base)}: not a PEP 691 project page: {exc}", url=redact(base)
        ) from exc
    out: list[IndexFile] = []
    for item in files if isinstance(files, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            continue
        hashes = item.get("hashes") if isinstance(item.get("hashes"), dict) else {}
        sha = hashes.get("sha256") if isinstance(hashes, dict) else None
        rp = item.get("requires-python")
        out.append(
            IndexFile(
                filename=item["filename"],
                url=urljoin(base, str(item.get("url", ""))),
                sha256=sha if isinstance(sha, str) else None,
                requires_python=rp if isinstance(rp, str) else None,
                yanked=bool(item.get("yanked", False)),
            )
        )
    return out
