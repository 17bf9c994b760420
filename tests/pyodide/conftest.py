"""Fixtures of the pyodide engine tests: assets (fetched once), engines, workspaces, plans.

Every Deno process a test starts is a child of this process; `_no_deno_left` fails the run if
one outlives the engine that started it, and kills it so nothing leaks either way.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from sandboxes import (
    ExecutionPlan,
    Limits,
    Program,
    ProgramKind,
    StateMode,
    WorkspacePaths,
    session_key,
)
from sandboxes.pyodide import PyodideEngine, setup_pyodide
from tests.conftest import IN_CI

SECRET_ENV = "SANDGATE_TEST_SECRET"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pyodide: needs Deno and the Pyodide assets")


def deno_children() -> list[psutil.Process]:
    """Deno processes (and their jail launchers) started by this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "host.mjs" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="session")
def secret() -> Iterator[str]:
    """A secret planted in this process's environment before any engine starts."""
    value = "sg-secret-" + secrets.token_hex(12)
    os.environ[SECRET_ENV] = value
    yield value
    os.environ.pop(SECRET_ENV, None)


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The Pyodide assets, fetched on first use (a fresh CI machine downloads ~6 MB once)."""
    try:
        import deno  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("the `deno` Python package is required in CI: pip install deno")
        pytest.skip("the `deno` Python package is not installed")
    try:
        return setup_pyodide(progress=print)
    except Exception as exc:
        if IN_CI:
            raise
        pytest.skip(f"the Pyodide assets could not be prepared here: {exc}")


@pytest.fixture(scope="session")
async def engine(anyio_backend: str, assets_dir: Path, secret: str) -> AsyncIterator[PyodideEngine]:
    """One hardened engine shared by the suite (each test uses its own session ids)."""
    async with PyodideEngine(assets_dir=assets_dir, pool_size=3) as started:
        await started.wait_ready()
        yield started


@pytest.fixture(scope="session")
async def open_engine(
    anyio_backend: str, assets_dir: Path, secret: str
) -> AsyncIterator[PyodideEngine]:
    """An engine whose JS globals are kept, to test Deno's permission layer on its own."""
    async with PyodideEngine(assets_dir=assets_dir, pool_size=1, harden_js=False) as started:
        yield started


@pytest.fixture(scope="session", autouse=True)
def _no_deno_left() -> Iterator[None]:
    """Set up first, torn down last: after every engine closed, no Deno may be left."""
    yield
    left = deno_children()
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            continue
    assert left == [], f"Deno processes outlived their engines: {[p.pid for p in left]}"


@pytest.fixture
def workspace(tmp_path: Path) -> WorkspacePaths:
    files, site = tmp_path / "files", tmp_path / "site"
    files.mkdir()
    site.mkdir()
    return WorkspacePaths(files, site)


@pytest.fixture(scope="module")
async def shared_session(
    request: pytest.FixtureRequest, engine: PyodideEngine
) -> AsyncIterator[str]:
    """One session for a module's tests that leave no state behind (saves process boots)."""
    sid = f"{request.module.__name__}-{secrets.token_hex(4)}"
    yield sid
    await engine.end_session(session_key("local", sid))


@pytest.fixture
async def session_id(request: pytest.FixtureRequest, engine: PyodideEngine) -> AsyncIterator[str]:
    """A session id of this test's own; its processes (and `-other`'s) end with the test."""
    sid = f"{request.node.name}-{secrets.token_hex(4)}"
    yield sid
    for name in (sid, sid + "-other"):
        await engine.end_session(session_key("local", name))


def make_plan(
    workspace: WorkspacePaths,
    source: str,
    *,
    session: str,
    kind: ProgramKind = "code",
    variable: str | None = None,
    stdin: bytes = b"",
    limits: Limits | None = None,
    final_expression: bool = True,
    state: StateMode = "persistent",
) -> ExecutionPlan:
    """A plan as the gate makes it for `pyodide_execute`: REPL-like, the code's final
    expression comes back as the value unless `final_expression` is False, and the session
    keeps its interpreter unless `state` is `fresh`."""
    return ExecutionPlan(
        decision_id="test",
        engine="pyodide",
        program=Program(kind, source, variable, stdin, final_expression),
        limits=limits or Limits(wall_timeout_s=15.0),
        workspace=workspace,
        session_id=session,
        state=state,
    )
