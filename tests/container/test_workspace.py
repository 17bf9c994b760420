"""Recovery of pool folders after a crash touches only what the engine made, and never deletes
files of a session (no daemon needed)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from sandboxes import WorkspacePaths
from sandboxes.container._spec import LABEL_OWNER_START, owner_labels
from sandboxes.container._workspace import (
    CLAIM_FILE,
    LOST_FOUND,
    OWNER_FILE,
    Slot,
    lend,
    make_pool,
    recover,
)

INSTANCE = "0123456789ab"
OTHER = "ba9876543210"


def _dead_pool(pools: Path, instance: str = INSTANCE) -> Path:
    """A pool folder as a crashed server leaves it: its owner record names a gone process."""
    return make_pool(pools, {**owner_labels(instance), LABEL_OWNER_START: "-1"})


def _slot(pool: Path) -> Slot:
    return Slot.make(pool, uid=os.getuid(), gid=os.getgid())


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder`, by relative path, with its text."""
    return {
        str(path.relative_to(folder)): path.read_text()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def session(tmp_path: Path) -> WorkspacePaths:
    files, site = tmp_path / "ws" / "files", tmp_path / "ws" / "site"
    files.mkdir(parents=True)
    site.mkdir()
    return WorkspacePaths(files, site)


def test_entries_the_engine_did_not_make_survive_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pools = tmp_path / "pools"
    shared = pools / "shared-data"
    (shared / "deep").mkdir(parents=True)
    (shared / "deep" / "report.txt").write_text("keep me")
    (pools / "notes.txt").write_text("operator notes")
    (pools / INSTANCE).mkdir()  # an instance's name, but no owner record
    (pools / INSTANCE / "data.txt").write_text("not ours")
    (pools / OTHER).mkdir()  # an owner record naming another folder
    (pools / OTHER / OWNER_FILE).write_text(json.dumps(owner_labels(INSTANCE)))
    (pools / OTHER / "data.txt").write_text("not ours either")
    before = _tree(pools)

    with caplog.at_level(logging.WARNING, logger="sandgate.container"):
        assert recover(pools) == []
        assert recover(pools) == []  # a second start warns no more

    assert _tree(pools) == before
    warned = sorted(str(r.args[0]) for r in caplog.records if isinstance(r.args, tuple))
    assert warned == [str(pools / n) for n in (INSTANCE, OTHER, "notes.txt", "shared-data")]
    assert not (pools / LOST_FOUND).exists()


def test_a_slot_with_files_but_no_claim_goes_to_lost_and_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pools = tmp_path / "pools"
    pool = _dead_pool(pools)
    unclaimed = _slot(pool)
    (unclaimed.files / "work.txt").write_text("unclaimed work")
    (unclaimed.site / "pkg").mkdir()
    (unclaimed.site / "pkg" / "__init__.py").write_text("x = 1")
    corrupt = _slot(pool)
    (corrupt.files / "more.txt").write_text("more work")
    (corrupt.root / CLAIM_FILE).write_text("{not json")

    with caplog.at_level(logging.WARNING, logger="sandgate.container"):
        assert recover(pools) == []

    lost = pools / LOST_FOUND
    assert _tree(lost / unclaimed.root.name) == {
        "files/work.txt": "unclaimed work",
        "site/pkg/__init__.py": "x = 1",
    }
    assert _tree(lost / corrupt.root.name) == {
        "files/more.txt": "more work",
        CLAIM_FILE: "{not json",
    }
    assert not pool.exists()
    assert sorted(os.listdir(pools)) == [LOST_FOUND]
    moved = {str(r.args[1]) for r in caplog.records if isinstance(r.args, tuple)}
    assert {str(lost / unclaimed.root.name), str(lost / corrupt.root.name)} <= moved


def test_a_claimed_slot_gives_its_files_back(tmp_path: Path, session: WorkspacePaths) -> None:
    pools = tmp_path / "pools"
    pool = _dead_pool(pools)
    (session.files / "keep.txt").write_text("mine")
    slot = _slot(pool)
    lend(slot, session, uid=os.getuid(), gid=os.getgid())
    (slot.files / "new.txt").write_text("written by the run")
    assert os.listdir(session.files) == []

    assert recover(pools) == [str(session.files)]

    assert _tree(session.files) == {"keep.txt": "mine", "new.txt": "written by the run"}
    assert os.listdir(pools) == []


def test_empty_slots_and_the_pool_folder_are_removed(tmp_path: Path) -> None:
    pools = tmp_path / "pools"
    pool = _dead_pool(pools)
    _slot(pool)
    _slot(pool)
    assert recover(pools) == []
    assert os.listdir(pools) == []


def test_a_foreign_entry_in_a_dead_pool_folder_keeps_the_folder(
    tmp_path: Path, session: WorkspacePaths
) -> None:
    pools = tmp_path / "pools"
    pool = _dead_pool(pools)
    (pool / "README").write_text("someone's")
    (session.files / "keep.txt").write_text("mine")
    slot = _slot(pool)
    lend(slot, session, uid=os.getuid(), gid=os.getgid())

    assert recover(pools) == [str(session.files)]

    assert _tree(session.files) == {"keep.txt": "mine"}
    assert set(os.listdir(pool)) == {OWNER_FILE, "README"}


def test_the_pool_of_a_live_server_is_left_alone(tmp_path: Path, session: WorkspacePaths) -> None:
    pools = tmp_path / "pools"
    pool = make_pool(pools, owner_labels(INSTANCE))
    (session.files / "keep.txt").write_text("mine")
    slot = _slot(pool)
    lend(slot, session, uid=os.getuid(), gid=os.getgid())

    assert recover(pools) == []

    assert _tree(slot.files) == {"keep.txt": "mine"}


def test_discarding_a_slot_with_unclaimed_files_moves_them_to_lost_and_found(
    tmp_path: Path,
) -> None:
    pools = tmp_path / "pools"
    slot = _slot(make_pool(pools, owner_labels(INSTANCE)))
    (slot.files / "work.txt").write_text("unclaimed work")
    slot.discard()
    assert _tree(pools / LOST_FOUND) == {f"{slot.root.name}/files/work.txt": "unclaimed work"}


def test_a_pool_folder_is_named_so_that_recovery_knows_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="12 lowercase hex digits"):
        make_pool(tmp_path, owner_labels("not-an-instance"))
    assert os.listdir(tmp_path) == []


def test_a_half_made_pool_folder_of_a_gone_server_is_removed(tmp_path: Path) -> None:
    pools = tmp_path / "pools"
    pool = _dead_pool(pools)
    half_made = pools / f".{INSTANCE}"
    os.rename(pool, half_made)  # as a crash between the owner record and the rename leaves it

    assert recover(pools) == []

    assert os.listdir(pools) == []


def test_a_half_made_pool_folder_of_a_live_server_is_left_alone(tmp_path: Path) -> None:
    pools = tmp_path / "pools"
    alive = pools / f".{INSTANCE}"
    alive.mkdir(parents=True)
    (alive / OWNER_FILE).write_text(json.dumps(owner_labels(INSTANCE)))  # this process: alive
    just_made = pools / f".{OTHER}"  # no owner record yet: made a moment ago
    just_made.mkdir()

    assert recover(pools) == []

    assert sorted(os.listdir(pools)) == sorted([alive.name, just_made.name])


def test_a_half_made_pool_folder_without_owner_record_goes_once_it_is_old(tmp_path: Path) -> None:
    pools = tmp_path / "pools"
    stale = pools / f".{INSTANCE}"
    stale.mkdir(parents=True)
    torn = pools / f".{OTHER}"
    torn.mkdir()
    (torn / OWNER_FILE).write_text('{"sandgate.inst')  # the crash cut the record short
    an_hour_ago = time.time() - 3600
    for folder in (stale, torn):
        os.utime(folder, (an_hour_ago, an_hour_ago))

    assert recover(pools) == []

    assert os.listdir(pools) == []


def test_a_half_made_pool_folder_holding_foreign_files_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pools = tmp_path / "pools"
    pool = _dead_pool(pools)
    (pool / "notes.txt").write_text("not the engine's")
    half_made = pools / f".{INSTANCE}"
    os.rename(pool, half_made)

    with caplog.at_level(logging.WARNING, logger="sandgate.container"):
        assert recover(pools) == []

    assert _tree(half_made)["notes.txt"] == "not the engine's"
    assert any("half-made" in r.getMessage() for r in caplog.records)


def test_make_pool_leaves_no_half_made_folder_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools = tmp_path / "pools"

    def refuse(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(OSError, match="No space"):
        make_pool(pools, owner_labels(INSTANCE))
    assert os.listdir(pools) == []
