"""Name resolution for the egress proxy: once per connection, by the server, with an override
table for tests and air-gapped sites (`server.egress.hosts`)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping

RESOLVE_TIMEOUT_S = 5.0


def normal_host(host: str) -> str:
    """The host as rules see it: lower case, no trailing dot, IPv6 without brackets."""
    return host.strip().strip("[]").rstrip(".").lower()


def literal_address(host: str) -> str | None:
    """`host` as a normalised IP address when it is one, else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


async def resolve(host: str, port: int, overrides: Mapping[str, str]) -> str | None:
    """The one address a connection to `host:port` goes to, or None when the name does not
    resolve (within `RESOLVE_TIMEOUT_S`)."""
    if (address := literal_address(host)) is not None:
        return address
    if host in overrides:
        return literal_address(overrides[host])
    loop = asyncio.get_running_loop()
    try:
        answers = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
    except (OSError, TimeoutError, UnicodeError):
        return None
    for _family, _type, _proto, _name, sockaddr in answers:
        return literal_address(str(sockaddr[0]))
    return None
