"""Several `sandgate serve` front ends sharing one Redis (and a Ray cluster), as the tests of
shared sessions and of `serve --ray` start and talk to them: a policy's grants, a front end
on Ray, an SDK client with a grant's token, a bounded wait for what another process does."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2 as httpx
from mcp import Client
from mcp.client.session import ElicitationFnT
from mcp.client.streamable_http import streamable_http_client

from tests.processes import serving_http
from tests.tenancy._server import CALL_TIMEOUT_S, START_TIMEOUT_S, token_of

if TYPE_CHECKING:
    from tests.batch.conftest import RayCluster

POLL_S = 0.05
"""How often `until` looks again."""
WAIT_S = 90.0
"""`until`'s bound unless told: a start on a loaded machine, an audit record, a call's end."""


def grants_yaml(grants: Iterable[str]) -> str:
    """A policy's `grants:` block: each grant known by the SHA-256 of its `token_of`."""
    return "grants:\n" + "".join(
        f"  {g}: {{token_sha256: '{hashlib.sha256(token_of(g).encode()).hexdigest()}'}}\n"
        for g in grants
    )


def bearer(grant: str) -> dict[str, str]:
    """The HTTP headers that present `grant`'s token."""
    return {"Authorization": f"Bearer {token_of(grant)}"}


@contextmanager
def serving_on_ray(
    policy: Path, state_dir: Path, cluster: RayCluster, *, workers: int = 1
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `sandgate serve --ray` front end on `cluster`, once it listens: its MCP URL and its
    process, stopped on exit."""
    with serving_http(
        policy,
        state_dir,
        workers=workers,
        extra=("--ray", cluster.address),
        start_timeout_s=START_TIMEOUT_S,
        env=cluster.env,
    ) as served:
        yield served


@asynccontextmanager
async def mcp_client(
    url: str,
    grant: str,
    *,
    elicitation_callback: ElicitationFnT | None = None,
) -> AsyncIterator[Client]:
    """A connected SDK client of the front end at `url` with `grant`'s token (`auto` mode:
    a legacy client has no back-channel for input requests with shared sessions)."""
    async with (
        httpx.AsyncClient(headers=bearer(grant), timeout=CALL_TIMEOUT_S) as http,
        Client(
            streamable_http_client(url, http_client=http),
            elicitation_callback=elicitation_callback,
        ) as client,
    ):
        yield client


async def until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Return once `check()` holds; fail naming `what` after `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            while not check():
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"{what}: still not so after {timeout_s:g} s") from None
