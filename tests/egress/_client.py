"""A host-side client going through the proxy with a lease, as a guest's urllib would."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

from sandboxes import REFUSAL_HEADER, Egress

CLIENT_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back: the status, the body, and the refusal header (or CONNECT reason)."""

    status: int
    body: bytes
    refused: str | None


def _fetch(lease: Egress, url: str, data: bytes | None, headers: dict[str, str]) -> Answer:
    context = ssl.create_default_context(cafile=str(lease.ca_certificate))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": lease.proxy_url(), "https": lease.proxy_url()}),
        urllib.request.HTTPSHandler(context=context),
    )
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with opener.open(request, timeout=CLIENT_TIMEOUT_S) as response:
            return Answer(response.status, response.read(), None)
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read(), error.headers.get(REFUSAL_HEADER))
    except urllib.error.URLError as error:  # a refused CONNECT: its reason phrase
        text = str(error.reason)
        marker = "Tunnel connection failed: "
        if marker not in text:
            raise
        status, _, reason = text.partition(marker)[2].partition(" ")
        return Answer(int(status), b"", reason.strip())


async def fetch(
    lease: Egress, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    """GET (or POST with `data`) `url` through the lease's proxy, off the event loop."""
    return await asyncio.to_thread(_fetch, lease, url, data, headers or {})


async def fetch_incomplete(lease: Egress, url: str) -> int:
    """GET `url` expecting the proxy to cut it; returns the bytes that arrived."""

    def run() -> int:
        try:
            answer = _fetch(lease, url, None, {})
        except http.client.IncompleteRead as cut:
            return len(cut.partial)
        raise AssertionError(f"the transfer was not cut: {answer.status}, {len(answer.body)} B")

    return await asyncio.to_thread(run)
