"""`sandgate batch --from-snapshot ID`: every job's session starts from one snapshot (its files
here; interpreters: tests/tenancy/test_snapshots.py), each job on its own copy, the restore
decided and audited like any call. Real gate, audit and wasm engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import Caller, Config, Job, open_service
from runner.batch import BatchError, Start, arun_batch
from sandboxes import WasmEngine

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]


def _config(tmp_path: Path) -> Config:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        "tools:\n  run_code: {}\n  snapshot_session: {}\n  restore_session: {}\n"
    )
    return Config(policy_path=policy, state_dir=tmp_path / "state", tool_sets=("native",))


async def _snapshot_with_data(config: Config, engine: WasmEngine) -> str:
    async with open_service(config, engines={"wasm": engine}) as service:
        caller = Caller(grant="batch", session="setup")
        made = await service.call_tool(
            "run_code", {"code": "open('data.txt', 'w').write('41')"}, caller
        )
        assert not made.is_error
        taken = await service.call_tool("snapshot_session", {}, caller)
        assert taken.structured_content is not None, taken
        return str(taken.structured_content["snapshot"]["id"])


async def test_every_job_starts_from_its_own_copy_of_the_snapshot(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    config = _config(tmp_path)
    snapshot = await _snapshot_with_data(config, wasm_engine)
    code = "v = int(open('data.txt').read())\nopen('data.txt', 'w').write('0')\nprint(v + 1)"
    jobs = [Job(id=f"job-{i}", code=code, expected_stdout="42") for i in range(4)]

    summary = await arun_batch(
        jobs,
        out=tmp_path / "out.jsonl",
        config=config,
        concurrency=2,
        progress="off",
        start=Start(from_snapshot=snapshot),
    )

    assert summary.statuses == {"ok": 4}, summary
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True] * 4
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").open()]
    restores = [r for r in audit if r.get("tool") == "restore_session"]
    assert sum(r.get("outcome") == "completed" for r in restores) == 4


async def test_a_snapshot_the_grant_does_not_own_stops_the_batch_before_any_job(
    tmp_path: Path, wasm_engine: WasmEngine
) -> None:
    config = _config(tmp_path)
    snapshot = await _snapshot_with_data(config, wasm_engine)

    with pytest.raises(BatchError, match="no such snapshot of the grant 'someone-else'"):
        await arun_batch(
            [Job(id="a", code="print(1)")],
            out=tmp_path / "out.jsonl",
            config=config,
            progress="off",
            start=Start(grant="someone-else", from_snapshot=snapshot),
        )
