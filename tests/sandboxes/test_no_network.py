"""What code meets on every engine (wasm prepared and started per call, Pyodide, runc, gVisor):
a network attempt raises one clear error saying the sandbox has no network and what the
policy allows, shown as the user's frames and that one line (no library frames, no chained
tracebacks); and a matplotlib figure left open comes back as an image on every call of a
session, however quick the calls (engines without matplotlib say so and skip)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from sandboxes import ExecutionPlan, Limits, Program, RunResult, WorkspacePaths, session_key
from sandboxes._types import StateMode
from tests.sandboxes.conftest import Target

pytestmark = pytest.mark.anyio

NO_NETWORK = "sandgate: this sandbox has no network (policy network: none)"

ATTEMPTS = {
    "urllib": "import urllib.request\nurllib.request.urlopen('http://example.org', timeout=5)\n",
    "http.client": (
        "import http.client\n"
        "http.client.HTTPConnection('example.org', timeout=5).request('GET', '/')\n"
    ),
    "getaddrinfo": "import socket\nsocket.getaddrinfo('example.org', 80)\n",
    "connect": "import socket\nsocket.socket().connect(('93.184.215.14', 80))\n",
    "create_connection": "import socket\nsocket.create_connection(('example.org', 443), 5)\n",
}
"""Ways code reaches for the network, each ending with the refusal uncaught."""

LEFT_OPEN = (
    "import matplotlib\n"
    "matplotlib.use('Agg')\n"
    "import matplotlib.pyplot as plt\n"
    "plt.plot([1, {n}])\n"
)


class Run(Protocol):
    async def __call__(self, source: str, *, state: StateMode = "fresh") -> RunResult: ...


@pytest.fixture
async def run(target: Target, workspace: WorkspacePaths) -> AsyncIterator[Run]:
    """Runs code in this test's own session on the engine under test."""
    session = f"no-network-{secrets.token_hex(4)}"

    async def run_code(source: str, *, state: StateMode = "fresh") -> RunResult:
        plan = ExecutionPlan(
            decision_id=f"no-network-{secrets.token_hex(4)}",
            engine=target.kind,
            program=Program("code", source),
            limits=Limits(wall_timeout_s=30.0),
            workspace=workspace,
            session_id=session,
            runtime=target.runtime,
            state=state,
        )
        return await target.engine.run(plan)

    yield run_code
    await target.engine.end_session(session_key("local", session))


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
async def test_a_network_attempt_fails_with_one_line_saying_there_is_no_network(
    run: Run, attempt: str
) -> None:
    result = await run(ATTEMPTS[attempt])
    assert result.status == "error", result.stderr
    assert result.error is not None and NO_NETWORK in result.error, result.error
    lines = result.stderr.splitlines()
    assert lines[-1] == result.error, result.stderr  # the refusal is the last line, once
    assert sum(NO_NETWORK in line for line in lines) == 1, result.stderr
    assert "During handling" not in result.stderr, result.stderr
    shown = [line for line in lines if line.lstrip().startswith("File ")]
    assert shown and all('"<code>"' in line for line in shown), result.stderr


async def test_a_kept_interpreter_refuses_on_every_run(run: Run, target: Target) -> None:
    if not target.engine.capabilities.persistent_state:
        pytest.skip(f"{target.name} keeps no interpreter between runs")
    first = await run("import socket, urllib.request\nready = True\n", state="persistent")
    assert first.status == "ok", first.stderr
    for _ in range(2):
        again = await run(ATTEMPTS["urllib"], state="persistent")
        assert again.state == "kept", again.state_note
        assert again.error is not None and NO_NETWORK in again.error, again.stderr


async def test_code_can_catch_the_refusal_as_an_os_error(run: Run) -> None:
    result = await run(
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('example.org', 80), 5)\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    assert result.status == "ok", result.stderr
    assert NO_NETWORK in result.stdout, result.stdout


MATPLOTLIB = pytest.mark.parametrize("target", ["wasm"], indirect=True)
"""The engine whose guest has matplotlib (Pyodide's and the image's have the stdlib only); the
figures are the guest program's work, the same for a prepared and a started wasm guest."""


@MATPLOTLIB
@pytest.mark.parametrize("state", ["fresh", "persistent"])
async def test_a_figure_left_open_comes_back_on_every_quick_call(
    run: Run, state: StateMode
) -> None:
    results = [await run(LEFT_OPEN.format(n=n), state=state) for n in range(5)]
    assert [r.status for r in results] == ["ok"] * 5, [r.stderr for r in results]
    assert [[i.path for i in r.images] for r in results] == [["figure_1.png"]] * 5
    assert len({r.images[0].data for r in results}) == 5  # each call's own figure


@MATPLOTLIB
async def test_an_image_the_code_saves_is_returned_instead_of_its_open_figure(run: Run) -> None:
    await run(LEFT_OPEN.format(n=2))
    saved = await run(LEFT_OPEN.format(n=3) + "plt.savefig('mine.png')\n")
    assert [i.path for i in saved.images] == ["mine.png"]
