"""Snapshots on every engine: what `snapshot_session`, `restore_session`, `fork_session`,
`list_snapshots` and `delete_snapshot` answer, and that a restored or forked session continues
with the snapshot's globals (`run_python_code` keeps them, as upstream) and files. An engine
that cannot save interpreters (`Capabilities.snapshots`) refuses with the same words but its
name; the matrix shows which."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ._harness import ENGINE_KEYS, Bench, Seen

pytestmark = pytest.mark.anyio

SETUP = "import json\nk = 41\nopen('note.txt', 'w').write('from the snapshot')"
ASK = {"code": "y = json.loads(str(k)) + 1\nz = open('note.txt').read()", "variable_to_return": "y"}


def _saves(bench: Bench) -> bool:
    return bench.engine.capabilities.snapshots


def _snapshot_of(answer: Seen) -> dict[str, Any]:
    assert not answer.is_error, answer
    assert answer.structured is not None
    return dict(answer.structured["snapshot"])


async def test_snapshot_then_restore_brings_back_globals_and_files(
    bench: Bench, session: str, record_property: Callable[[str, object], None]
) -> None:
    await bench.call("run_python_code", {"code": SETUP}, session=session)
    taken = await bench.call("snapshot_session", {}, session=session)
    if not _saves(bench):
        record_property("matrix", "refuses")  # shown in the matrix instead of "pass"
        assert taken.is_error
        assert "cannot save interpreters" in taken.text and "interpreter: false" in taken.text
        return
    snap = _snapshot_of(taken)
    assert taken.text.startswith(f"Snapshot {snap['id']}: 1 files and installed packages, ")
    assert snap["engines"] == [ENGINE_KEYS[bench.profile]]
    assert set(snap) == {
        "id",
        "label",
        "created_at",
        "session",
        "bytes",
        "files",
        "engines",
        "skipped",
    }
    await bench.call(
        "run_python_code", {"code": "k = 0\nimport os\nos.remove('note.txt')"}, session=session
    )

    restored = await bench.call("restore_session", {"snapshot_id": snap["id"]}, session=session)
    after = await bench.call("run_python_code", ASK, session=session)

    assert restored.structured == {
        "snapshot_id": snap["id"],
        "session": "",
        "interpreters": [ENGINE_KEYS[bench.profile]],
        "not_restored": {},
    }
    assert after == Seen(False, (("text", "42"),), None)


async def test_fork_session_makes_independent_sessions(bench: Bench, session: str) -> None:
    await bench.call("run_python_code", {"code": SETUP}, session=session)
    taken = await bench.call("snapshot_session", {"interpreter": _saves(bench)}, session=session)
    snap = _snapshot_of(taken)

    forked = await bench.call(
        "fork_session", {"snapshot_id": snap["id"], "count": 2, "prefix": "fk"}, session=session
    )
    change = "k = 99\nopen('note.txt', 'w').write('changed')\nprint(k)"
    peek = "print(k if 'k' in globals() else 'no k', open('note.txt').read())"
    one = await bench.call("run_code", {"code": change, "session": "fk-1"}, session=session)
    two = await bench.call("run_code", {"code": peek, "session": "fk-2"}, session=session)

    assert forked.structured is not None
    assert forked.structured["sessions"] == ["fk-1", "fk-2"]
    assert one.structured is not None and one.structured["stdout"] == "99\n"
    assert two.structured is not None
    # run_code is fresh by default: the fork's files are there, its globals serve the tools
    # that keep them (run_python_code), never another session's change
    assert two.structured["stdout"] == "no k from the snapshot\n"


async def test_list_and_delete_snapshots(bench: Bench, session: str) -> None:
    await bench.call("run_code", {"code": "open('one.txt', 'w').write('1')"}, session=session)
    taken = _snapshot_of(
        await bench.call(
            "snapshot_session", {"label": "mine", "interpreter": False}, session=session
        )
    )

    listed = await bench.call("list_snapshots", {}, session=session)
    deleted = await bench.call("delete_snapshot", {"snapshot_id": taken["id"]}, session=session)
    again = await bench.call("list_snapshots", {}, session=session)

    assert listed.structured is not None and again.structured is not None
    assert taken in listed.structured["snapshots"]
    assert f"{taken['id']}  {taken['bytes']} bytes  1 files  interpreters: none  label: mine" in (
        listed.text.splitlines()
    )
    assert deleted == Seen(
        False,
        (("text", f"Deleted snapshot {taken['id']} ({taken['bytes']} bytes freed)."),),
        {"deleted": taken["id"], "bytes": taken["bytes"]},
    )
    assert taken["id"] not in [s["id"] for s in again.structured["snapshots"]]
