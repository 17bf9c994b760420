"""Servers the egress tests reach through the proxy: HTTP and HTTPS on 127.0.0.1, with a test
CA made here, under names the proxy's resolver override maps (`NAMES`). Engines' egress tests
(E2/E3 and the every-engine suite) may use them too: `start_origin(folder)`."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAMES = ("api.test", "other.test", "files.example.org", "rebind.test", "localhost")
"""Names the test CA's server certificate covers; tests map them to 127.0.0.1."""
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """The running test servers.

    Attributes:
        http_port: Plain HTTP on 127.0.0.1.
        https_port: HTTPS on 127.0.0.1 (certificate for `NAMES` and 127.0.0.1).
        ca: The test CA certificate (PEM): the proxy's `upstream_ca`.
        received: Every `/echo` request the servers got (method, path, headers, body), as
            they got it.
    """

    http_port: int
    https_port: int
    ca: Path
    received: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received: list[dict[str, Any]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/bytes/"):
            size = int(self.path.removeprefix("/bytes/"))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            sent = 0
            try:
                while sent < size:
                    part = min(CHUNK_BYTES, size - sent)
                    self.wfile.write(b"x" * part)
                    sent += part
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            return
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body.decode(errors="replace"),
        }
        self.received.append(seen)
        answer = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def _test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `NAMES`; returns (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandgate egress test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "test-ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextmanager
def start_origin(folder: Path) -> Iterator[Origin]:
    """HTTP and HTTPS test servers on 127.0.0.1 until the block ends."""
    ca, cert, key = _test_ca(folder)
    received: list[dict[str, Any]] = []
    handler = type("Handler", (_Handler,), {"received": received})
    plain = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    secure = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    threads = [
        threading.Thread(target=s.serve_forever, daemon=True, name="egress-origin")
        for s in (plain, secure)
    ]
    for thread in threads:
        thread.start()
    try:
        yield Origin(plain.server_address[1], secure.server_address[1], ca, received)
    finally:
        for server, thread in zip((plain, secure), threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
