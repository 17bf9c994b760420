"""The disk fills up: a small tmpfs mounted (by the test) as the server's state folder.

With the workspaces on the full disk (audit and counters elsewhere), a call whose files cannot
be written gets a clear infrastructure error and counts nothing, code that writes gets its own
`OSError` (a user-code error, counted), and once space is freed the next call works. With
everything on the full disk, calls are refused clearly (the audit or the state store cannot be
written) and work again once space is freed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandboxes import WasmEngine
from tests.results import text_of

from .conftest import Tracked, fault_policy, require, stack

pytestmark = [pytest.mark.anyio, pytest.mark.wasm, pytest.mark.slow]

TMPFS_BYTES = 4 * 1024 * 1024


def _small_disk(tracked: Tracked, point: Path) -> Path:
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    point.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    require(mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    return tracked.mount(point)


def _fill(point: Path) -> Path:
    """Fill the filesystem at `point` to the last byte; returns the filler file."""
    filler = point / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as out:
        for _ in range(TMPFS_BYTES // len(chunk) + 2):
            try:
                out.write(chunk)
                out.flush()
            except OSError:
                break
    while True:  # the last partial chunk
        try:
            with filler.open("ab") as out:
                out.write(b"\0")
        except OSError:
            return filler


async def test_a_full_workspace_disk_fails_the_affected_calls_clearly(
    wasm_engine: WasmEngine, tmp_path: Path, tracked: Tracked
) -> None:
    disk = _small_disk(tracked, tmp_path / "disk")
    records = tmp_path / "records"
    policy = fault_policy(
        max_runs=4,
        extra=f"audit: {{path: '{records}/audit.jsonl'}}\n"
        f"state: {{path: '{records}/state.sqlite3'}}\n",
    )
    async with stack(
        tmp_path,
        policy,
        {"wasm": wasm_engine},
        state_dir=disk,
        audit_path=records / "audit.jsonl",
        db_path=records / "state.sqlite3",
    ) as live:
        assert not (await live.run("print(1)")).is_error
        filler = _fill(disk)
        before = len(live.records())
        unsaved = await live.run("print(2)", files={"data.txt": "x" * 100_000})
        text = text_of(unsaved)
        assert unsaved.is_error and "No space left on device" in text, text
        assert "could not use this session's workspace" in text and "nothing was counted" in text
        assert str(disk) not in text  # no host paths shown
        decision = next(r["id"] for r in live.records()[before:] if r["event"] == "decision")
        outcome = live.outcome_of(decision)
        assert outcome["outcome"] == "infra_error" and "No space left" in outcome["error"]
        written = await live.run("with open('out.txt', 'w') as f:\n    f.write('x' * 100_000)")
        payload = written.structured_content or {}
        assert written.is_error and payload.get("status") == "error", payload
        assert "No space left on device" in payload["stderr"], payload["stderr"]
        filler.unlink()
        after = await live.run("print('ok')", files={"data.txt": "saved now"})
        assert not after.is_error, text_of(after)
        assert live.units() == 3  # print(1), the user's failed write, the last one


async def test_a_full_state_disk_refuses_calls_until_space_is_freed(
    wasm_engine: WasmEngine, tmp_path: Path, tracked: Tracked
) -> None:
    disk = _small_disk(tracked, tmp_path / "disk")
    async with stack(
        tmp_path, fault_policy(max_runs=10), {"wasm": wasm_engine}, state_dir=disk
    ) as live:
        assert not (await live.run("print(1)")).is_error
        filler = _fill(disk)
        refused = await live.run("print(2)")
        payload = refused.structured_content or {}
        text = text_of(refused)
        assert refused.is_error, text
        # Refused by the gate, never an unhandled error: whichever write fails first, the
        # audit record (/audit) or the counter (/state).
        assert payload.get("status") == "denied", text
        assert payload.get("rule") in ("/audit", "/state"), text
        filler.unlink()
        again = await live.run("print(3)")
        assert not again.is_error, text_of(again)
