"""The conformance suite's fixtures: one service per engine with every tool routed to it, the
suite's package mirror and operator mounts, and the matrix printed at the end of the run.

`engine` is parametrized at package scope, so the run goes engine by engine (every case on
wasm, then on Pyodide, …) and only one engine's service is up at a time. In CI (`CI=true`) an
engine that cannot start fails its cases; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path

import anyio
import pytest

from runner import Caller, Config, open_service
from runner._mounts import parse_mount
from runner.packages.mirror import load_allowlist, sync_mirror
from sandboxes import Engine, WasmEngine
from sandboxes.container import ContainerEngine
from tests.conftest import IN_CI
from tests.container.conftest import Tracker, docker_api, tracker  # noqa: F401  (fixtures)
from tests.mirror._builders import make_wheel, write_index
from tests.pyodide.conftest import assets_dir  # noqa: F401  (fixture)

from ._harness import (
    ENGINE_PARAMS,
    GRANT,
    PACKAGE,
    PACKAGE_VERSION,
    PNG,
    RO_TEXT,
    Bench,
    Matrix,
    policy_text,
)

logger = logging.getLogger("sandgate.conformance")
MATRIX = pytest.StashKey[Matrix]()
FIRST_CALL_BOUND_S = 240.0
"""How long an engine may take to answer its first call (a cold Pyodide pool on 2 cores)."""
NEEDS: dict[str, tuple[str, ...]] = {
    "pyodide": ("assets_dir",),
    "container": ("docker_api",),
    "gvisor": ("docker_api",),
}
"""The fixtures that skip (or fail, in CI) when an engine's prerequisites are missing."""


def pytest_configure(config: pytest.Config) -> None:
    config.stash[MATRIX] = Matrix()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ENGINE_PARAMS, scope="package")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    matrix = item.config.stash.get(MATRIX, None)
    callspec = getattr(item, "callspec", None)
    engine = callspec.params.get("engine") if callspec is not None else None
    if matrix is None or not isinstance(engine, str) or not isinstance(item, pytest.Function):
        return report
    case = item.originalname.removeprefix("test_")
    if report.when == "call":
        shown = str(dict(report.user_properties).get("matrix", "pass"))  # e.g. "refuses"
        matrix.verdict(case, engine, shown if report.passed else "FAIL")
    elif report.skipped:
        matrix.verdict(case, engine, "skip")
    elif report.failed:
        matrix.verdict(case, engine, "ERROR")
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    matrix = terminalreporter.config.stash.get(MATRIX, None)
    if matrix is None or not matrix.verdicts:
        return
    terminalreporter.section("sandgate conformance matrix: cases x engines")
    for line in matrix.lines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="package")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The allow-list and a mirror of one hand-made wheel, synced from a local index."""
    root = tmp_path_factory.mktemp("conformance-mirror")
    wheel = make_wheel(root / "built", PACKAGE, PACKAGE_VERSION)
    index = write_index(root / "index", [wheel])
    allowlist = root / "allow.toml"
    allowlist.write_text(f'[packages]\n{PACKAGE} = "*"\n')
    report = sync_mirror(load_allowlist(allowlist), root / "mirror", index_url=index)
    assert report.failures == (), report.failures
    return allowlist, root / "mirror"


def _unavailable(profile: str, reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the {profile} engine is required in CI: {reason}")
    pytest.skip(reason)


async def _first_call(bench: Bench) -> str | None:
    """The engine's first run; why the engine is unavailable when it does not answer 'ok'."""
    with anyio.move_on_after(FIRST_CALL_BOUND_S) as waited:
        answer = await bench.service.call_tool(
            "run_code", {"code": "print('ok')"}, Caller(GRANT, "first-call")
        )
    if waited.cancelled_caught:
        return f"the {bench.profile} engine did not answer in {FIRST_CALL_BOUND_S:g} s"
    await bench.end_session("first-call")
    found = answer.structured_content or {}
    if found.get("status") != "ok" or found.get("stdout") != "ok\n":
        said = " ".join(getattr(b, "text", "") for b in answer.content)
        return f"the {bench.profile} engine did not answer a trivial run: {said}"
    return None


@pytest.fixture(scope="package")
def track(request: pytest.FixtureRequest) -> Callable[[Engine], Engine]:
    """Registers a container engine's instance with the container suite's tracker, so its
    containers are removed at the end whatever happened (other engines leave none)."""

    def tracked(engine: Engine) -> Engine:
        if isinstance(engine, ContainerEngine):
            found: Tracker = request.getfixturevalue("tracker")
            found.track(engine)
        return engine

    return tracked


@pytest.fixture(scope="package")
async def bench(
    engine: str,
    wasm_engine: WasmEngine,
    mirror: tuple[Path, Path],
    track: Callable[[Engine], Engine],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    anyio_backend: str,
) -> AsyncIterator[Bench]:
    """A service routing every tool to `engine`, with operator mounts `ro` and `rw`; one
    per engine, closed before the next engine's opens."""
    for needed in NEEDS.get(engine, ()):
        request.getfixturevalue(needed)
    folder = tmp_path_factory.mktemp(f"conformance-{engine}")
    ro, rw = folder / "ro", folder / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "notes.txt").write_text(RO_TEXT)
    (ro / "chart.png").write_bytes(PNG)
    policy = folder / "policy.yaml"
    policy.write_text(policy_text(engine, allowlist=mirror[0], mirror=mirror[1]))
    config = Config(
        policy_path=policy,
        state_dir=folder / "state",
        mounts=(parse_mount(f"ro={ro}:ro"), parse_mount(f"rw={rw}:rw")),
        progress=logger.info,
    )
    async with open_service(config, engines={"wasm": wasm_engine}) as service:
        made = Bench(engine, service, ro, rw)
        unavailable = await _first_call(made)
        if unavailable is not None:
            _unavailable(engine, unavailable)
        track(made.engine)
        try:
            yield made
        finally:
            for session in list(made.sessions):
                await made.end_session(session)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def session(bench: Bench, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A session of this case's own, ended after it."""
    made = bench.new_session(request.node.originalname.removeprefix("test_"))
    yield made
    await bench.end_session(made)
