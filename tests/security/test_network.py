"""Network egress: TCP and UDP to the host's loopback listeners, DNS, raw sockets and a cloud
metadata address. The listeners (TCP, UDP, and a raw ICMP socket as root) must see nothing,
and no run may hang: each attempt has a 2 s timeout inside the sandbox."""

from __future__ import annotations

import pytest

from ._arena import EMULATED, WALL_TIMEOUT_S, Arena

pytestmark = [pytest.mark.anyio, pytest.mark.security, pytest.mark.slow]

RUN_BOUND_S = WALL_TIMEOUT_S + 30.0
"""Longest a network attack may take from the host's side (a cold sandbox included)."""

TCP = """
import socket, urllib.request
def tcp(host, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, TCP_PORT))
        s.sendall(MARKER.encode())
        return "connected"
    finally:
        s.close()
for host in ("127.0.0.1", "localhost", "0.0.0.0", "127.0.0.2"):
    attempt("!tcp " + host, tcp, host)
attempt("!tcp ::1", lambda: tcp("::1", socket.AF_INET6))
attempt("!urllib", lambda: urllib.request.urlopen("http://127.0.0.1:%d/" % TCP_PORT, timeout=2))
report()
"""

UDP = """
import socket
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(MARKER.encode(), (host, port))
        return s.recvfrom(512)
    finally:
        s.close()
attempt("udp loopback", udp, "127.0.0.1", UDP_PORT)
attempt("udp localhost", udp, "localhost", UDP_PORT)
report()
"""

DNS = """
import socket, struct
attempt("!getaddrinfo pypi.org", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("!gethostbyname", lambda: socket.gethostbyname("files.pythonhosted.org"))
def query(server, port):
    labels = (MARKER[:60], "example", "com")
    name = b"".join(bytes([len(p)]) + p.encode() for p in labels) + b"\\0"
    packet = struct.pack(">HHHHHH", 0x5347, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(packet, (server, port))
        return s.recvfrom(512)
    finally:
        s.close()
attempt("dns query to the host's loopback", query, "127.0.0.1", UDP_PORT)
attempt("resolv.conf", read, "/etc/resolv.conf")
report()
"""

RAW = """
import socket, struct
def checksum(data):
    data += b"\\0" * (len(data) % 2)
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
def echo(kind):
    s = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
    s.settimeout(2)
    try:
        body = MARKER.encode()
        header = struct.pack("!BBHHH", 8, 0, 0, 0x5347, 1)
        header = struct.pack("!BBHHH", 8, 0, checksum(header + body), 0x5347, 1)
        s.sendto(header + body, ("127.0.0.1", 0))
        return s.recvfrom(512)
    finally:
        s.close()
attempt("raw icmp", lambda: echo(socket.SOCK_RAW))
attempt("ping socket", lambda: echo(socket.SOCK_DGRAM))
attempt("!packet socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300))
attempt("raw tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP))
attempt("interfaces", lambda: socket.if_nameindex())
report()
"""

METADATA = """
import socket, urllib.request
def tcp(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        return "connected"
    finally:
        s.close()
attempt("!metadata tcp", tcp, "169.254.169.254", 80)
attempt("!metadata http", lambda: urllib.request.urlopen(
    "http://169.254.169.254/latest/meta-data/", timeout=2).read(200))
attempt("!gcp metadata", lambda: urllib.request.urlopen(urllib.request.Request(
    "http://metadata.google.internal/computeMetadata/v1/",
    headers={"Metadata-Flavor": "Google"}), timeout=2).read(200))
report()
"""


async def _egress(arena: Arena, code: str) -> None:
    outcome = await arena.attack(code)
    assert outcome.elapsed_s < RUN_BOUND_S, f"the run took {outcome.elapsed_s:.1f} s"
    await arena.verify(outcome, statuses={"ok", "timeout"}, admissions=arena.engine not in EMULATED)


async def test_tcp_to_the_host_loopback(arena: Arena) -> None:
    await _egress(arena, TCP)


async def test_udp_to_the_host_loopback(arena: Arena) -> None:
    await _egress(arena, UDP)


async def test_dns_lookups(arena: Arena) -> None:
    await _egress(arena, DNS)


async def test_raw_sockets(arena: Arena) -> None:
    await _egress(arena, RAW)


async def test_cloud_metadata_address(arena: Arena) -> None:
    await _egress(arena, METADATA)
