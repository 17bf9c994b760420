"""A snapshot store several servers share (the nodes of a cluster over one folder): each
writer's unfinished folder is removed only by its owner or once provably abandoned, and a
snapshot is published whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runner.snapshots import SnapshotInfo, SnapshotStore
from runner.snapshots._store import STALE_INCOMING_S


def info(store: SnapshotStore, grant: str, session_id: str, at: float) -> SnapshotInfo:
    return SnapshotInfo(
        id=store.new_id(),
        grant=grant,
        label="",
        created_at=at,
        session=session_id.removeprefix("named:"),
        bytes=0,
        files=0,
        engines=(),
        session_id=session_id,
    )


def dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(done.stdout)


def test_another_server_opening_the_store_leaves_a_snapshot_being_built(tmp_path: Path) -> None:
    one = SnapshotStore(tmp_path)
    building = one.incoming("alice")
    (building / "files").mkdir()
    SnapshotStore(tmp_path)  # another node starts meanwhile
    assert building.is_dir()
    published = one.commit(building, info(one, "alice", "named:a", 1.0))
    assert [i.id for i in SnapshotStore(tmp_path).list("alice")] == [published.id]


def test_folders_of_dead_writers_and_stale_ones_are_removed(tmp_path: Path) -> None:
    live = SnapshotStore(tmp_path).incoming("alice")
    orphan = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{dead_pid()}-"))
    elsewhere = live.with_name(".incoming-otherhost-1-00000000000000ff")
    stale = live.with_name(".incoming-otherhost-2-00000000000000ee")
    for folder in (orphan, elsewhere, stale):
        folder.mkdir()
    old = os.stat(stale).st_mtime - STALE_INCOMING_S - 60
    os.utime(stale, (old, old))
    SnapshotStore(tmp_path)
    assert live.is_dir() and elsewhere.is_dir()
    assert not orphan.exists() and not stale.exists()


def test_the_last_snapshot_of_a_session_is_found_from_any_server(tmp_path: Path) -> None:
    one, other = SnapshotStore(tmp_path), SnapshotStore(tmp_path)
    for at, session in ((1.0, "named:a"), (2.0, "named:a"), (3.0, "http:b")):
        one.commit(one.incoming("alice"), info(one, "alice", session, at))
    last = other.last_of("alice", "named:a")
    assert last is not None and last.created_at == 2.0
    assert other.last_of("bob", "named:a") is None, "another grant's snapshots are not found"
    assert other.last_of("alice", "named:c") is None
