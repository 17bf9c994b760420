"""Every new interpreter draws its own random numbers, on every engine: guests start from
snapshots taken once (the wasm guest's pre-initialised image, Pyodide's memory snapshot), in
which `random` may already be imported and seeded; a session must never replay another's
sequence. (A fork of a saved session continues its parent's sequence, as a copy does.)"""

from __future__ import annotations

import secrets

import pytest

from sandboxes import ExecutionPlan, Limits, Program, StateMode, WorkspacePaths, session_key
from tests.sandboxes.conftest import Target

pytestmark = pytest.mark.anyio

DRAW = "import random\nprint(random.getrandbits(64))"


async def _draw(target: Target, workspace: WorkspacePaths, state: StateMode) -> str:
    session = f"random-{secrets.token_hex(4)}"
    plan = ExecutionPlan(
        decision_id=f"random-{secrets.token_hex(4)}",
        engine=target.kind,
        program=Program("code", DRAW),
        limits=Limits(wall_timeout_s=30.0),
        workspace=workspace,
        session_id=session,
        grant="local",
        runtime=target.runtime,
        state=state,
    )
    try:
        result = await target.engine.run(plan)
    finally:
        await target.engine.end_session(session_key("local", session))
    assert result.status == "ok", result
    return result.stdout


@pytest.mark.parametrize("state", ["fresh", "persistent"])
async def test_two_new_interpreters_draw_different_numbers(
    target: Target, workspace: WorkspacePaths, state: StateMode
) -> None:
    first = await _draw(target, workspace, state)
    second = await _draw(target, workspace, state)

    assert first != second
