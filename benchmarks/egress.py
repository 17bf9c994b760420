"""Egress proxy cost: added latency per request and throughput, through the proxy vs direct.

Run: `python benchmarks/egress.py [--requests N] [--megabytes M]`. Starts a loopback HTTP
server and HTTPS server (a throwaway CA made here), the egress proxy (mitmdump from `sandgate
setup egress`) with one lease allowing the test name, then, in the same run:

    latency     N sequential GETs of a small body, a new connection each (as urllib does):
                p50/p95 ms direct and through the proxy (HTTP; HTTPS: CONNECT + interception).
    throughput  one GET of M MB: MB/s direct and through the proxy (HTTP and HTTPS).

Prints one line per figure; the proxy's figures next to the direct baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _figures import percentile
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sandboxes.egress import EgressProxy, EgressVerdict, egress_venv

NAME = "bench.test"
CHUNK = 256 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        size = int(self.path.strip("/") or 0)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"x" * CHUNK
        sent = 0
        while sent < size:
            part = min(CHUNK, size - sent)
            self.wfile.write(block[:part])
            sent += part

    def log_message(self, format: str, *args: object) -> None:
        pass


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress benchmark CA")])

    def built(subject: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca = (
        built(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        built(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]), key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextmanager
def _servers(folder: Path) -> Iterator[tuple[int, int, Path]]:
    ca, leaf, key = _certificates(folder)
    plain = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    secure = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf, key)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    for server in (plain, secure):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield plain.server_address[1], secure.server_address[1], ca
    finally:
        for server in (plain, secure):
            server.shutdown()
            server.server_close()


def _opener(proxy: str | None, ca: Path) -> Callable[[str], int]:
    """GET a URL, return the body's size; through `proxy` when given."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = proxy is not None  # direct: the name is not resolvable
    if proxy is None:
        context.verify_mode = ssl.CERT_NONE
    handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=context)]
    handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {}))
    opener = urllib.request.build_opener(*handlers)

    def get(url: str) -> int:
        size = 0
        with opener.open(url, timeout=60) as response:
            while block := response.read(CHUNK):
                size += len(block)
        return size

    return get


def _latency(get: Callable[[str], int], url: str, requests: int) -> tuple[float, float]:
    took = []
    for _ in range(requests):
        began = time.perf_counter()
        get(url)
        took.append((time.perf_counter() - began) * 1000)
    return percentile(took, 0.5), percentile(took, 0.95)


def _throughput(get: Callable[[str], int], url: str) -> float:
    began = time.perf_counter()
    size = get(url)
    return size / (time.perf_counter() - began) / 1e6


async def _main(requests: int, megabytes: int) -> None:
    if not (egress_venv() / "bin" / "mitmdump").exists():
        sys.exit("mitmproxy's venv is missing: run `sandgate setup egress` first")
    with (
        tempfile.TemporaryDirectory(prefix="sandgate-egress-bench-") as tmp,
        _servers(Path(tmp)) as (http_port, https_port, ca),
    ):
        proxy = EgressProxy(Path(tmp), hosts={NAME: "127.0.0.1"}, upstream_ca=ca)
        await proxy.start()
        try:
            lease = await proxy.lease(
                decide=lambda host, port, address: EgressVerdict(True, "/bench", "")
            )
            proxied_ca = Path(tmp) / "trust.pem"
            proxied_ca.write_bytes(lease.ca_certificate.read_bytes())
            direct = _opener(None, ca)
            proxied = _opener(lease.proxy_url(), proxied_ca)
            size = megabytes * 1_000_000
            cases = [
                ("http ", f"http://127.0.0.1:{http_port}", f"http://{NAME}:{http_port}"),
                ("https", f"https://127.0.0.1:{https_port}", f"https://{NAME}:{https_port}"),
            ]
            for scheme, plain_base, named_base in cases:
                figures = await asyncio.to_thread(
                    lambda p=plain_base, n=named_base: (
                        _latency(direct, f"{p}/64", requests),
                        _latency(proxied, f"{n}/64", requests),
                        _throughput(direct, f"{p}/{size}"),
                        _throughput(proxied, f"{n}/{size}"),
                    )
                )
                (d50, d95), (p50, p95), dmb, pmb = figures
                print(
                    f"{scheme} latency    direct p50 {d50:6.2f} ms p95 {d95:6.2f} ms | "
                    f"proxy p50 {p50:6.2f} ms p95 {p95:6.2f} ms | added p50 "
                    f"{p50 - d50:+.2f} ms"
                )
                print(
                    f"{scheme} throughput direct {dmb:8.1f} MB/s | proxy {pmb:8.1f} MB/s "
                    f"({pmb / dmb:.0%} of direct, {megabytes} MB)"
                )
            used = await proxy.release(lease)
            print(
                f"the proxy counted {used.bytes_down / 1e6:.1f} MB down, {used.allowed} connections"
            )
        finally:
            await proxy.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="GETs per latency figure")
    parser.add_argument("--megabytes", type=int, default=100, help="size of the throughput GET")
    args = parser.parse_args()
    asyncio.run(_main(args.requests, args.megabytes))


if __name__ == "__main__":
    main()
