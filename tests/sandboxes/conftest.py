"""Every engine as one fixture, for the suites that pin one behaviour on all of them (final
expression, statuses, operator mounts): `target` is each engine in turn, started for a module's
cases and closed after them. In CI (`CI=true`) an engine that cannot start fails; elsewhere it
skips."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from sandboxes import Engine, EngineUnavailable, WasmEngine, WorkspacePaths
from tests.conftest import IN_CI

ENGINES = [
    pytest.param("wasm", marks=pytest.mark.wasm, id="wasm"),
    pytest.param("wasm-started", marks=pytest.mark.wasm, id="wasm-started"),
    pytest.param("pyodide", marks=pytest.mark.pyodide, id="pyodide"),
    pytest.param("runc", marks=pytest.mark.container, id="runc"),
    pytest.param("runsc", marks=pytest.mark.container, id="runsc"),
]
"""wasm with prepared guests (the server's default) and with a guest started per call (the
path of calls a prepared guest does not fit), Pyodide, and the container engine under runc and
gVisor's runsc."""


@dataclass(frozen=True)
class Target:
    """An engine under test, and how a plan names it (`engine`, `runtime`)."""

    name: str
    engine: Engine
    kind: str
    runtime: str | None = None


def unavailable(reason: str) -> NoReturn:
    """Skip (a failure in CI) for an engine this host cannot run."""
    if IN_CI:
        pytest.fail(f"this engine is required in CI: {reason}")
    pytest.skip(reason)


async def _pyodide() -> AsyncIterator[Target]:
    try:
        import deno  # noqa: F401

        from sandboxes.pyodide import PyodideEngine, setup_pyodide
    except ImportError as exc:
        unavailable(f"the pyodide engine needs the `deno` package: {exc}")
    try:
        assets = setup_pyodide(progress=print)
    except Exception as exc:  # any failure to prepare the assets makes the engine unavailable
        unavailable(f"the Pyodide assets could not be prepared: {type(exc).__name__}: {exc}")
    async with PyodideEngine(assets_dir=assets, pool_size=2) as engine:
        await engine.wait_ready()
        yield Target("pyodide", engine, "pyodide")


async def _container(runtime: str, pool_dir: Path) -> AsyncIterator[Target]:
    from sandboxes.container import ContainerEngine

    engine = ContainerEngine(runtime="runc" if runtime == "runc" else "runsc", pool_dir=pool_dir)
    async with engine:  # removes every container it made, whatever happened
        try:
            await engine.start()
        except EngineUnavailable as exc:
            unavailable(f"the {runtime} engine cannot start: {exc}")
        yield Target(runtime, engine, "container", runtime)


@pytest.fixture(scope="module", params=ENGINES)
async def target(
    request: pytest.FixtureRequest,
    wasm_engine: WasmEngine,
    tmp_path_factory: pytest.TempPathFactory,
    anyio_backend: str,
) -> AsyncIterator[Target]:
    """Each engine in turn. Container pools live beside the tests' workspaces (one file
    system), so a session's files are lent to a container by rename, as in a server."""
    name: str = request.param
    if name == "wasm":
        yield Target(name, wasm_engine, "wasm")
    elif name == "wasm-started":
        async with WasmEngine(workers=1, prepare_guests=False, embedded_guests=False) as started:
            await started.wait_ready()
            yield Target(name, started, "wasm")
    elif name == "pyodide":
        async for made in _pyodide():
            yield made
    else:
        async for made in _container(name, tmp_path_factory.mktemp(f"pool-{name}")):
            yield made


@pytest.fixture
def workspace(tmp_path: Path) -> WorkspacePaths:
    """A session workspace laid out like the runner's (folders of mode 0700)."""
    files, site = tmp_path / "ws" / "files", tmp_path / "ws" / "site"
    files.mkdir(parents=True, mode=0o700)
    site.mkdir(mode=0o700)
    return WorkspacePaths(files, site)
