"""Shared fixtures: one real WASM engine for the session, services and in-memory MCP clients."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from runner import Config, Service, open_service
from sandboxes import WasmEngine
from tests.fuzz import _profiles  # noqa: F401  (registers the fuzz suite's hypothesis profiles)

IN_CI = os.environ.get("CI") == "true"

pytest_plugins = ("tests.egress.fixtures",)


def require_binary(name: str) -> str:
    """The path of a needed program; skipped outside CI when missing, a failure in CI."""
    found = shutil.which(name)
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI and is not installed")
        pytest.skip(f"{name} is not installed")
    return found


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def wasm_engine(anyio_backend: str) -> AsyncIterator[WasmEngine]:
    """One real engine (3 worker processes) shared by every test that needs a guest."""
    async with WasmEngine(workers=3) as engine:
        await engine.wait_ready()
        yield engine


@asynccontextmanager
async def service_for(
    state_dir: Path, engine: WasmEngine, policy: Path | None = None
) -> AsyncIterator[Service]:
    """A service on the real engine with its own state folder."""
    config = Config(policy_path=policy, state_dir=state_dir)
    async with open_service(config, engines={"wasm": engine}) as service:
        yield service
