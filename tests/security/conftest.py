"""The attack suite's fixtures: one real service per engine, per-case plants, the outcome table.

Every case is parametrized over `ENGINES` at the function level, so the run goes case by case
across the engines (a Pyodide pool refills while the containers run). Each engine has one
service for the whole package, and one session per test module (a fresh one where a case
needs it). In CI (`CI=true`) an engine that cannot start fails its cases; elsewhere they are
skipped with the reason the server gave.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from runner import Caller, Config, open_service
from sandboxes import WasmEngine
from tests.conftest import IN_CI

from ._arena import (
    ENGINES,
    GRANT,
    HEALTH_CODE,
    PROFILES,
    Arena,
    Table,
    Target,
    policy_text,
)
from ._plant import SECRET_ENV, SESSION_SECRET_ENV, Plant, token

logger = logging.getLogger("sandgate.security")
TABLE = pytest.StashKey[Table]()
PROBE_BOUND_S = 240.0
"""How long an engine may take to answer its first call (a cold Pyodide pool on 2 cores)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "security: an attack case run on every engine (wasm, pyodide, runc, runsc)"
    )
    config.stash[TABLE] = Table()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ENGINES)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    table = item.config.stash.get(TABLE, None)
    callspec = getattr(item, "callspec", None)
    engine = callspec.params.get("engine") if callspec is not None else None
    if table is None or not isinstance(engine, str) or not isinstance(item, pytest.Function):
        return report
    case = item.originalname.removeprefix("test_")
    if hasattr(report, "wasxfail"):  # a known gap (SECURITY.md): xfail, or XPASS once fixed
        table.verdict(case, engine, "xfail" if report.skipped else "XPASS")
    elif report.when == "call":
        table.verdict(case, engine, "pass" if report.passed else "FAIL")
    elif report.skipped:
        table.verdict(case, engine, "skip")
    elif report.failed:
        table.verdict(case, engine, "ERROR")
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    table = terminalreporter.config.stash.get(TABLE, None)
    if table is None or not table.verdicts:
        return
    terminalreporter.section("sandgate attack suite: cases x engines")
    for line in table.lines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def outcomes(request: pytest.FixtureRequest) -> Table:
    """The table every case writes its outcome to (printed by `pytest_terminal_summary`)."""
    return request.config.stash[TABLE]


@pytest.fixture(scope="package")
def session_secret() -> Iterator[str]:
    """A secret in the server's environment before any engine of the suite starts."""
    value = token("session")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SESSION_SECRET_ENV, value)
        yield value


def _pyodide_missing() -> str | None:
    try:
        import deno  # noqa: F401

        from sandboxes.pyodide import setup_pyodide
    except ImportError as exc:
        return f"the pyodide engine needs the `deno` package: {exc}"
    try:
        setup_pyodide(progress=logger.info)
    except Exception as exc:  # any failure to prepare the assets makes the engine unavailable
        return f"the Pyodide assets could not be prepared: {type(exc).__name__}: {exc}"
    return None


async def _open(stack: AsyncExitStack, engine: str, wasm: WasmEngine, folder: Path) -> Target:
    target = Target(engine, folder / "state")
    if engine == "pyodide":
        target.unavailable = await anyio.to_thread.run_sync(_pyodide_missing)
        if target.unavailable:
            return target
    policy = folder / "policy.yaml"
    policy.write_text(policy_text(PROFILES[engine]))
    config = Config(policy_path=policy, state_dir=target.state_dir, progress=logger.info)
    target.service = await stack.enter_async_context(open_service(config, engines={"wasm": wasm}))
    return target


async def _probe(target: Target) -> None:
    """The engine's first call: if it does not answer 'ok', the engine is unavailable."""
    if target.service is None:
        return
    caller = Caller(grant=GRANT, session="probe")
    with anyio.move_on_after(PROBE_BOUND_S) as waited:
        result = await target.service.call_tool("run_code", {"code": HEALTH_CODE}, caller)
    if waited.cancelled_caught:
        target.unavailable = f"the {target.engine} engine did not answer in {PROBE_BOUND_S:g} s"
        return
    answer = result.structured_content or {}
    if answer.get("status") != "ok" or answer.get("stdout") != "ok\n":
        said = " ".join(getattr(b, "text", "") for b in result.content)
        target.unavailable = f"the {target.engine} engine did not answer a trivial run: {said}"
    await target.end_session("probe")


@pytest.fixture(scope="package")
async def targets(
    session_secret: str,
    wasm_engine: WasmEngine,
    tmp_path_factory: pytest.TempPathFactory,
    anyio_backend: str,
) -> AsyncIterator[dict[str, Target]]:
    """One service per engine, each with a policy routing `run_code` to that engine (closed
    when the last case of this package has run, not at the end of a whole-suite run)."""
    async with AsyncExitStack() as stack:
        found: dict[str, Target] = {}
        for engine in ENGINES:
            folder = tmp_path_factory.mktemp(f"security-{engine}")
            found[engine] = await _open(stack, engine, wasm_engine, folder)
        async with anyio.create_task_group() as group:
            for target in found.values():
                group.start_soon(_probe, target)
        yield found
        for target in found.values():
            for session in list(target.sessions):
                await target.end_session(session)


@pytest.fixture(scope="module")
async def module_sessions(
    request: pytest.FixtureRequest, targets: dict[str, Target]
) -> AsyncIterator[dict[str, str]]:
    """One session per engine for this module's cases (their workspace is emptied per case)."""
    sessions: dict[str, str] = {}
    yield sessions
    for engine, session in sessions.items():
        await targets[engine].end_session(session)


@pytest.fixture
async def arena(
    engine: str,
    targets: dict[str, Target],
    module_sessions: dict[str, str],
    session_secret: str,
    outcomes: Table,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Arena]:
    """The case's arena on `engine`: host plants made, the module's session emptied."""
    target = targets[engine]
    if target.service is None or target.unavailable:
        reason = target.unavailable or f"the {engine} engine did not start"
        if IN_CI:
            pytest.fail(f"{engine} is required in CI: {reason}")
        pytest.skip(reason)
    env_secret = token("env")
    monkeypatch.setenv(SECRET_ENV, env_secret)
    assert os.environ[SESSION_SECRET_ENV] == session_secret
    plant = Plant.make(tmp_path / "host", env_secret=env_secret, session_secret=session_secret)
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    session = module_sessions.setdefault(engine, f"{module}-{engine}")
    target.sessions.add(session)
    case = request.node.originalname.removeprefix("test_")
    made = Arena(target, plant, case=case, table=outcomes, session=session, host=tmp_path)
    made.reset_workspace()
    try:
        yield made
    finally:
        await made.close()
        plant.close()
