"""Snapshots of live sessions, on every engine, over real streamable HTTP, three grants at once:
a snapshot keeps the session's globals as well as its files; forks are independent of each
other and of their parent; another grant's snapshot is not found; a snapshot survives a server
restart and resumes there. An engine that cannot save interpreters refuses clearly and still
saves files with `interpreter: false`."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.tenancy._server import GRANTS, engine_params, tenant_policy, tenant_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SAVES_INTERPRETERS = {"wasm": True, "pyodide": True, "container": False, "gvisor": True}
"""Engine profile → whether it saves a session's interpreter (the conformance matrix lists it)."""


async def _call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None, result.content
    return dict(result.structured_content)


async def _stdout(client: Client, code: str, session: str) -> tuple[str, str]:
    """What `code` printed in the named session, and the session's state."""
    ran = await _call(client, "run_code", code=code, session=session)
    assert ran["status"] == "ok", ran
    return str(ran["stdout"]).strip(), str(ran["state"])


SETUP = (
    "import json\nclass Box:\n    def __init__(self, v): self.v = v\n"
    "box = Box({n})\nowner = {owner!r}"
)
SHOW = "box.v += {add}\nprint(owner, box.v, json.dumps([box.v]))"


async def _fork_and_check(client: Client, grant: str, n: int) -> str:
    await _stdout(client, SETUP.format(n=n, owner=grant), "base")
    snapshot = (await _call(client, "snapshot_session", session="base"))["snapshot"]
    assert snapshot["engines"], snapshot  # the live interpreter was saved
    forked = await _call(client, "fork_session", snapshot_id=snapshot["id"], count=2)
    first, second = forked["sessions"]

    assert await _stdout(client, SHOW.format(add=1), first) == (
        f"{grant} {n + 1} [{n + 1}]",
        "kept",
    )
    assert await _stdout(client, SHOW.format(add=0), second) == (f"{grant} {n} [{n}]", "kept")
    assert await _stdout(client, SHOW.format(add=0), "base") == (f"{grant} {n} [{n}]", "kept")
    return str(snapshot["id"])


@pytest.mark.parametrize("engine", engine_params(*[e for e, s in SAVES_INTERPRETERS.items() if s]))
async def test_snapshots_keep_globals_forks_are_independent_and_a_restart_keeps_them(
    tmp_path: Path, engine: str
) -> None:
    policy = tenant_policy(engine, state="persistent")
    with tenant_server(tmp_path, engine, policy=policy) as server:
        async with contextlib.AsyncExitStack() as stack:
            opened = [await stack.enter_async_context(server.client(g)) for g in GRANTS]
            ids = await asyncio.gather(
                *(_fork_and_check(opened[i], g, 40 + i) for i, g in enumerate(GRANTS))
            )
            stolen = await opened[1].call_tool("restore_session", {"snapshot_id": ids[0]})
            assert stolen.is_error and "not one of them" in str(stolen.content)

    with tenant_server(tmp_path, engine, policy=policy) as server:
        async with server.client("alice") as alice:
            restored = await _call(alice, "restore_session", snapshot_id=ids[0], session="back")
            assert restored["interpreters"], restored
            assert await _stdout(alice, SHOW.format(add=2), "back") == ("alice 42 [42]", "kept")


@pytest.mark.parametrize(
    "engine", engine_params(*[e for e, s in SAVES_INTERPRETERS.items() if not s])
)
async def test_an_engine_that_cannot_save_interpreters_refuses_and_saves_files_only(
    tmp_path: Path, engine: str
) -> None:
    policy = tenant_policy(engine, state="persistent")
    with tenant_server(tmp_path, engine, policy=policy) as server:
        async with server.client("alice") as alice:
            await _stdout(alice, "x = 1\nopen('f.txt', 'w').write('kept')", "base")

            refused = await alice.call_tool("snapshot_session", {"session": "base"})
            assert refused.is_error
            assert "cannot save interpreters" in str(refused.content)
            assert "interpreter: false" in str(refused.content)

            files_only = await _call(alice, "snapshot_session", session="base", interpreter=False)
            assert files_only["snapshot"]["engines"] == []
            forked = await _call(alice, "fork_session", snapshot_id=files_only["snapshot"]["id"])
            (name,) = forked["sessions"]
            assert await _stdout(alice, "print(open('f.txt').read())", name) == ("kept", "new")
