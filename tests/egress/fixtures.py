"""Fixtures of every egress test (a pytest plugin `tests/conftest.py` loads): the loopback
origin servers and one proxy per module, and the check that mitmproxy's venv is there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandboxes.egress import EgressProxy, egress_venv
from tests.conftest import IN_CI

from ._origin import NAMES, Origin, start_origin


def require_mitmproxy() -> None:
    if not (egress_venv() / "bin" / "mitmdump").exists():
        if IN_CI:
            pytest.fail("mitmproxy's venv is required in CI: run `sandgate setup egress`")
        pytest.skip("mitmproxy's venv is missing: run `sandgate setup egress`")


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    with start_origin(tmp_path_factory.mktemp("origin")) as running:
        yield running


@pytest.fixture(scope="module")
async def proxy(
    anyio_backend: str, origin: Origin, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EgressProxy]:
    """One mitmdump for the module; every test takes its own lease."""
    require_mitmproxy()
    state: Path = tmp_path_factory.mktemp("state")
    hosts = {**dict.fromkeys(NAMES, "127.0.0.1"), "metadata.test": "169.254.169.254"}
    async with EgressProxy(state, hosts=hosts, upstream_ca=origin.ca) as running:
        yield running


@pytest.fixture
def proxy_ready() -> None:
    """The egress venv is there (tests that start a server which starts the proxy)."""
    require_mitmproxy()


def egress_policy(tmp_path: Path, origin: Origin, network: str) -> Path:
    """A policy file routing `run_code` to `network` (YAML flow text), with the secret `token`
    (from $SANDGATE_TEST_EGRESS_TOKEN, for api.test as $API_TOKEN) and the test names mapped."""
    path = tmp_path / "policy.yaml"
    path.write_text(
        f"""
version: '1'
default: deny
secrets:
  - {{name: token, env: SANDGATE_TEST_EGRESS_TOKEN, hosts: [api.test], variable: API_TOKEN}}
server:
  egress:
    hosts: {{api.test: 127.0.0.1, other.test: 127.0.0.2}}
    upstream_ca: {origin.ca}
tools:
  run_code:
    quotas:
      network: {network}
"""
    )
    return path
