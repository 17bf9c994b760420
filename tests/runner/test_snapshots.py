"""Session snapshots through the tools, on the real wasm engine: what a snapshot keeps of the
files, who may see it, the quotas that bound it, its audit trail and its life across a restart.
(What each engine keeps of the interpreter: tests/tenancy/test_snapshots.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from runner import Caller, Service
from sandboxes import WasmEngine
from tests.conftest import service_for
from tests.results import text_of

pytestmark = pytest.mark.anyio

ALICE = Caller(grant="alice", session="alice-1")
BOB = Caller(grant="bob", session="bob-1")


def _policy(tmp_path: Path, server: str = "{}") -> Path:
    path = tmp_path / "policy.yaml"
    tools = [
        "run_code",
        "snapshot_session",
        "restore_session",
        "fork_session",
        "list_snapshots",
        "delete_snapshot",
    ]
    path.write_text(
        "version: '1'\ndefault: deny\ntools:\n"
        + "".join(f"  {t}: {{}}\n" for t in tools)
        + f"server: {server}\n"
    )
    return path


async def _call(service: Service, tool: str, caller: Caller, **args: Any) -> types.CallToolResult:
    return await service.call_tool(tool, args, caller)


async def _run(service: Service, caller: Caller, code: str, session: str | None = None) -> str:
    args: dict[str, Any] = {"code": code}
    if session is not None:
        args["session"] = session
    result = await _call(service, "run_code", caller, **args)
    assert result.structured_content is not None, text_of(result)
    assert result.structured_content["status"] == "ok", result.structured_content
    return str(result.structured_content["stdout"])


async def _snapshot(service: Service, caller: Caller, **args: Any) -> dict[str, Any]:
    result = await _call(service, "snapshot_session", caller, **args)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return dict(result.structured_content["snapshot"])


def _audit(state: Path) -> list[dict[str, Any]]:
    lines = (state / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


WRITE = "open('notes.txt', 'w').write('{text}')"
READ = "print(open('notes.txt').read())"


async def test_restore_brings_back_the_files_as_they_were(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    async with service_for(tmp_path / "state", wasm_engine, _policy(tmp_path)) as service:
        await _run(service, ALICE, WRITE.format(text="first"))
        snap = await _snapshot(service, ALICE, label="before")
        assert snap["files"] == 1 and snap["label"] == "before"
        await _run(service, ALICE, WRITE.format(text="second") + "\nopen('extra', 'w')")

        result = await _call(service, "restore_session", ALICE, snapshot_id=snap["id"])

        assert not result.is_error, text_of(result)
        assert await _run(service, ALICE, READ) == "first\n"
        assert await _run(service, ALICE, "import os; print(sorted(os.listdir('.')))") == (
            "['notes.txt']\n"
        )


async def test_forks_are_independent_copies(tmp_path: Path, wasm_engine: WasmEngine) -> None:
    async with service_for(tmp_path / "state", wasm_engine, _policy(tmp_path)) as service:
        await _run(service, ALICE, WRITE.format(text="base"), session="origin")
        snap = await _snapshot(service, ALICE, session="origin")

        result = await _call(
            service, "fork_session", ALICE, snapshot_id=snap["id"], count=3, prefix="try"
        )

        assert result.structured_content is not None, text_of(result)
        assert result.structured_content["sessions"] == ["try-1", "try-2", "try-3"]
        await _run(service, ALICE, WRITE.format(text="changed in try-1"), session="try-1")
        assert await _run(service, ALICE, READ, session="try-1") == "changed in try-1\n"
        assert await _run(service, ALICE, READ, session="try-2") == "base\n"
        assert await _run(service, ALICE, READ, session="try-3") == "base\n"
        assert await _run(service, ALICE, READ, session="origin") == "base\n"


async def test_a_fork_never_overwrites_a_session(tmp_path: Path, wasm_engine: WasmEngine) -> None:
    async with service_for(tmp_path / "state", wasm_engine, _policy(tmp_path)) as service:
        await _run(service, ALICE, WRITE.format(text="keep me"), session="work-1")
        snap = await _snapshot(service, ALICE)

        result = await _call(
            service, "fork_session", ALICE, snapshot_id=snap["id"], count=2, prefix="work"
        )

        assert result.is_error
        assert "argument 'prefix'" in text_of(result) and "'work-1' exists" in text_of(result)
        assert await _run(service, ALICE, READ, session="work-1") == "keep me\n"


async def test_another_grants_snapshot_is_not_found(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    async with service_for(tmp_path / "state", wasm_engine, _policy(tmp_path)) as service:
        await _run(service, ALICE, WRITE.format(text="alice secret"))
        snap = await _snapshot(service, ALICE)

        theirs = await _call(service, "restore_session", BOB, snapshot_id=snap["id"])
        unknown = await _call(service, "restore_session", BOB, snapshot_id="snap-0000000000000000")
        listed = await _call(service, "list_snapshots", BOB)
        forked = await _call(service, "fork_session", BOB, snapshot_id=snap["id"])
        deleted = await _call(service, "delete_snapshot", BOB, snapshot_id=snap["id"])

        assert theirs.is_error and unknown.is_error and forked.is_error and deleted.is_error
        assert text_of(theirs).replace(snap["id"], "ID") == text_of(unknown).replace(
            "snap-0000000000000000", "ID"
        )
        assert listed.structured_content == {"snapshots": []}
        mine = await _call(service, "list_snapshots", ALICE)
        assert mine.structured_content is not None
        assert [s["id"] for s in mine.structured_content["snapshots"]] == [snap["id"]]


async def test_a_bad_snapshot_id_names_the_argument(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    async with service_for(tmp_path / "state", wasm_engine, _policy(tmp_path)) as service:
        result = await _call(service, "restore_session", ALICE, snapshot_id="../../etc")

        assert result.is_error
        assert "argument 'snapshot_id': expected a snapshot id" in text_of(result)
        assert "'../../etc'" in text_of(result)


async def test_links_and_host_files_never_enter_a_snapshot(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    async with service_for(tmp_path / "state", wasm_engine, _policy(tmp_path)) as service:
        await _run(service, ALICE, WRITE.format(text="mine"))
        files = service.session_of(ALICE).workspace.files
        os.symlink(secret, files / "link-to-host")  # as a hostile run on another engine could
        snap = await _snapshot(service, ALICE)
        assert snap["skipped"] == ["link-to-host"]

        await _call(service, "fork_session", ALICE, snapshot_id=snap["id"], prefix="f")

        forked = service.session_of(ALICE, "f-1").workspace.files
        assert sorted(p.name for p in forked.iterdir()) == ["notes.txt"]


async def test_a_sparse_file_counts_its_blocks_and_stays_sparse(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    async with service_for(tmp_path / "state", wasm_engine, _policy(tmp_path)) as service:
        code = "f = open('big', 'wb'); f.seek(1 << 30); f.write(b'end'); f.close()"
        await _run(service, ALICE, code)
        snap = await _snapshot(service, ALICE)

        assert snap["bytes"] < 1 << 20

        await _call(service, "fork_session", ALICE, snapshot_id=snap["id"], prefix="s")
        copy = service.session_of(ALICE, "s-1").workspace.files / "big"
        assert copy.stat().st_size == (1 << 30) + 3
        assert copy.stat().st_blocks * 512 < 1 << 20


async def test_snapshot_count_quota_refuses_and_counts_nothing(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    policy = _policy(tmp_path, "{max_snapshots_per_grant: 2}")
    async with service_for(tmp_path / "state", wasm_engine, policy) as service:
        await _snapshot(service, ALICE)
        await _snapshot(service, ALICE)

        third = await _call(service, "snapshot_session", ALICE)

        assert third.is_error
        assert "server.max_snapshots_per_grant = 2" in text_of(third)
        assert "delete_snapshot" in text_of(third)
        await _snapshot(service, BOB)  # another grant's quota is its own
    records = [r for r in _audit(tmp_path / "state") if r.get("tool") == "snapshot_session"]
    refused = [r for r in records if r.get("rule") == "/server/max_snapshots_per_grant"]
    assert len(refused) == 1


async def test_snapshot_size_quota_keeps_nothing(tmp_path: Path, wasm_engine: WasmEngine) -> None:
    policy = _policy(tmp_path, "{max_snapshot_bytes_per_grant: 200000}")
    async with service_for(tmp_path / "state", wasm_engine, policy) as service:
        await _run(service, ALICE, "open('data', 'wb').write(b'x' * 400_000)")

        result = await _call(service, "snapshot_session", ALICE)

        assert result.is_error
        assert "server.max_snapshot_bytes_per_grant = 200000" in text_of(result)
        listed = await _call(service, "list_snapshots", ALICE)
        assert listed.structured_content == {"snapshots": []}
    leftovers = [p for p in (tmp_path / "state" / "snapshots").rglob("*") if p.is_file()]
    assert leftovers == []


async def test_fork_quota_refuses_before_making_any_session(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    policy = _policy(tmp_path, "{max_forks_per_call: 2}")
    async with service_for(tmp_path / "state", wasm_engine, policy) as service:
        snap = await _snapshot(service, ALICE)

        result = await _call(service, "fork_session", ALICE, snapshot_id=snap["id"], count=3)

        assert result.is_error
        assert "server.max_forks_per_call" in text_of(result)
        assert not service.has_session(ALICE, f"{snap['id']}-1")


async def test_every_snapshot_operation_is_audited(tmp_path: Path, wasm_engine: WasmEngine) -> None:
    async with service_for(tmp_path / "state", wasm_engine, _policy(tmp_path)) as service:
        snap = await _snapshot(service, ALICE)
        await _call(service, "restore_session", ALICE, snapshot_id=snap["id"])
        await _call(service, "fork_session", ALICE, snapshot_id=snap["id"], count=2)
        await _call(service, "list_snapshots", ALICE)
        await _call(service, "delete_snapshot", ALICE, snapshot_id=snap["id"])

    records = _audit(tmp_path / "state")
    tools = ["snapshot_session", "restore_session", "fork_session", "list_snapshots"]
    for tool in [*tools, "delete_snapshot"]:
        mine = [r for r in records if r.get("tool") == tool and r.get("grant") == "alice"]
        assert mine, f"no audit record for {tool}"
        assert any(r.get("outcome") == "completed" for r in mine), mine


async def test_snapshots_outlive_a_restart(tmp_path: Path, wasm_engine: WasmEngine) -> None:
    state = tmp_path / "state"
    async with service_for(state, wasm_engine, _policy(tmp_path)) as service:
        await _run(service, ALICE, WRITE.format(text="before the restart"))
        snap = await _snapshot(service, ALICE)

    async with service_for(state, wasm_engine, _policy(tmp_path)) as service:
        listed = await _call(service, "list_snapshots", ALICE)
        assert listed.structured_content is not None
        assert [s["id"] for s in listed.structured_content["snapshots"]] == [snap["id"]]
        await _call(service, "restore_session", ALICE, snapshot_id=snap["id"])
        assert await _run(service, ALICE, READ) == "before the restart\n"
