"""The upstream index client: which index, PEP 503 HTML, PEP 691 JSON over HTTP with credentials."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.packages.mirror import load_allowlist, load_lock, sync_mirror
from runner.packages.mirror._index import DEFAULT_INDEX_URL, configured_index_url, redact
from runner.packages.mirror._simple import parse_simple_html

from ._builders import make_wheel

SERVER_JOIN_S = 10.0


def test_index_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert configured_index_url({}) == DEFAULT_INDEX_URL
    assert configured_index_url({"global.index-url": "https://a/simple"}) == "https://a/simple"
    both = {"global.index-url": "https://a/simple", "download.index-url": "https://b/simple"}
    assert configured_index_url(both) == "https://b/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://env/simple")
    assert configured_index_url(both) == "https://env/simple"


def test_redact_removes_credentials() -> None:
    assert redact("https://user:pw@host:8080/simple/") == "https://host:8080/simple/"
    assert redact("https://host/simple/") == "https://host/simple/"


def test_parse_simple_html() -> None:
    page = """<html><body>
    <a href="../../files/a-1.0-py3-none-any.whl#sha256=ABCDEF" data-requires-python="&gt;=3.8">
      a-1.0-py3-none-any.whl</a>
    <a href="https://cdn/a-0.9.tar.gz">a-0.9.tar.gz</a>
    <a href="a-0.8-py3-none-any.whl" data-yanked="">a-0.8-py3-none-any.whl</a>
    <a>no href</a>
    </body></html>"""
    files = parse_simple_html(page, "https://idx/simple/a/")
    assert [(f.filename, f.sha256, f.requires_python, f.yanked) for f in files] == [
        ("a-1.0-py3-none-any.whl", "abcdef", ">=3.8", False),
        ("a-0.9.tar.gz", None, None, False),
        ("a-0.8-py3-none-any.whl", None, None, True),
    ]
    assert files[0].url == "https://idx/files/a-1.0-py3-none-any.whl"


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    seen_auth: list[str | None] = []

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization"))
        expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.end_headers()
            return
        if self.path == "/simple/tiny/":
            body = json.dumps(
                {
                    "meta": {"api-version": "1.1"},
                    "name": "tiny",
                    "files": [
                        {
                            "filename": name,
                            "url": f"/files/{name}",
                            "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                        }
                        for name, data in self.files.items()
                    ],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        elif self.path.startswith("/files/") and self.path[7:] in self.files:
            body = self.files[self.path[7:]]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
        else:
            body = b"not found"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture
def json_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    wheel = make_wheel(tmp_path / "built", "tiny", "1.0")
    _Handler.files = {wheel.name: wheel.read_bytes()}
    _Handler.seen_auth = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://alice:s3cret@127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(SERVER_JOIN_S)


def test_sync_over_http_json_with_credentials(json_index: str, tmp_path: Path) -> None:
    allow = tmp_path / "allow.toml"
    allow.write_text('[packages]\ntiny = "*"\n')
    report = sync_mirror(
        load_allowlist(allow), tmp_path / "mirror", index_url=json_index, engines=("wasm",)
    )
    assert report.failures == ()
    assert [p.name for p in report.locked] == ["tiny"]
    assert all(auth is not None for auth in _Handler.seen_auth)
    lock_text = (tmp_path / "mirror" / "lock.json").read_text()
    assert "s3cret" not in lock_text and "alice" not in lock_text
    assert load_lock(tmp_path / "mirror").index_url.startswith("http://127.0.0.1:")
