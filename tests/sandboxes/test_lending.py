"""The one lending layer: a session's entries into a slot and back, with one clash rule."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxes import WorkspacePaths
from sandboxes._lending import LendingIncomplete, give_back, lend
from sandboxes.container._workspace import Slot as ContainerSlot
from sandboxes.container._workspace import give_back as container_give_back
from sandboxes.wasm._slot import Slot as WasmSlot


@pytest.fixture
def session(tmp_path: Path) -> Path:
    folder = tmp_path / "session"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "a.txt").write_text("a")
    (folder / "notes.txt").write_text("notes")
    return folder


@pytest.fixture
def slot(tmp_path: Path) -> Path:
    folder = tmp_path / "slot"
    folder.mkdir()
    return folder


def tree(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: file contents, `<dir>` or `-> target` for links."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "<dir>"
        else:
            out[rel] = path.read_text()
    return out


def test_lending_moves_every_entry_and_giving_back_restores_them(session: Path, slot: Path) -> None:
    before = tree(session)
    assert lend(session, slot) == ("data", "notes.txt")
    assert tree(session) == {}
    assert tree(slot) == before
    assert give_back(slot, session) == ("data", "notes.txt")
    assert tree(session) == before
    assert tree(slot) == {}


def test_a_file_the_run_wrote_replaces_the_sessions_file_of_its_name(
    session: Path, slot: Path
) -> None:
    lend(session, slot)
    (slot / "notes.txt").write_text("from the run")
    (session / "notes.txt").write_text("written meanwhile")
    give_back(slot, session)
    assert tree(session)["notes.txt"] == "from the run"
    assert not any(name.startswith("notes.txt.") for name in os.listdir(session))


def test_folders_of_one_name_merge_entry_by_entry(session: Path, slot: Path) -> None:
    lend(session, slot)
    (slot / "data" / "b.txt").write_text("b from the run")
    (session / "data").mkdir()
    (session / "data" / "c.txt").write_text("c written meanwhile")
    (session / "data" / "a.txt").write_text("a written meanwhile")
    give_back(slot, session)
    assert tree(session) == {
        "data": "<dir>",
        "data/a.txt": "a",
        "data/b.txt": "b from the run",
        "data/c.txt": "c written meanwhile",
        "notes.txt": "notes",
    }


def test_when_kinds_differ_the_runs_entry_takes_the_name(session: Path, slot: Path) -> None:
    lend(session, slot)
    (slot / "notes.txt").unlink()
    (slot / "notes.txt").mkdir()  # the run made a folder where a file was
    (slot / "notes.txt" / "inside.txt").write_text("in")
    (session / "notes.txt").write_text("a file written meanwhile")
    (session / "data").write_text("a file where the run has a folder")
    give_back(slot, session)
    assert tree(session) == {
        "data": "<dir>",
        "data/a.txt": "a",
        "notes.txt": "<dir>",
        "notes.txt/inside.txt": "in",
    }


def test_a_run_file_over_a_session_folder_replaces_the_whole_folder(
    session: Path, slot: Path
) -> None:
    lend(session, slot)
    (session / "notes.txt").mkdir()
    (session / "notes.txt" / "deep").mkdir()
    (session / "notes.txt" / "deep" / "x").write_text("x")
    give_back(slot, session)
    assert tree(session)["notes.txt"] == "notes"
    assert sorted(os.listdir(session)) == ["data", "notes.txt"]


def test_links_move_as_links_and_are_never_followed(
    session: Path, slot: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    lend(session, slot)
    (slot / "escape").symlink_to(outside)
    (slot / "data" / "a.txt").unlink()
    (slot / "data" / "a.txt").symlink_to(outside / "precious.txt")
    # meanwhile the session folder got a link where the run has a folder: replaced, not entered
    (session / "data").symlink_to(outside, target_is_directory=True)
    give_back(slot, session)
    assert tree(outside) == {"precious.txt": "keep me"}
    assert (session / "escape").is_symlink()
    assert not (session / "data").is_symlink()
    assert (session / "data" / "a.txt").is_symlink()
    assert tree(slot) == {}


def test_a_slot_that_holds_files_is_not_lent_to(session: Path, slot: Path) -> None:
    (slot / "other-session.txt").write_text("x")
    with pytest.raises(OSError):
        lend(session, slot)
    assert sorted(os.listdir(session)) == ["data", "notes.txt"]


@pytest.fixture
def other_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than `tmp_path` (renames between them fail)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) on this host")
    folder = Path(tempfile.mkdtemp(dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_entries_that_cannot_go_back_stay_in_the_slot_and_are_named(
    session: Path, other_disk: Path
) -> None:
    (other_disk / "made.txt").write_text("the run's")
    (other_disk / "data").mkdir()
    (other_disk / "data" / "new.txt").write_text("new")
    with pytest.raises(LendingIncomplete) as caught:
        give_back(other_disk, session)  # every rename crosses file systems
    assert caught.value.left == ("data/new.txt", "made.txt")
    assert tree(other_disk) == {"data": "<dir>", "data/new.txt": "new", "made.txt": "the run's"}
    assert tree(session) == {"data": "<dir>", "data/a.txt": "a", "notes.txt": "notes"}


def test_a_lend_to_another_disk_moves_nothing(session: Path, other_disk: Path) -> None:
    with pytest.raises(OSError):
        lend(session, other_disk)
    assert tree(session) == {"data": "<dir>", "data/a.txt": "a", "notes.txt": "notes"}
    assert tree(other_disk) == {}


def test_both_engines_give_back_by_the_same_rule(tmp_path: Path) -> None:
    """The wasm slot and the container slot end a clash the same way."""
    outcomes = []
    for engine in ("wasm", "container"):
        files = tmp_path / engine / "files"
        files.mkdir(parents=True)
        (files / "x").write_text("session file")
        site = tmp_path / engine / "site"
        site.mkdir()
        if engine == "wasm":
            wasm = WasmSlot.create(tmp_path / engine / "slots", "worker-1")
            wasm.move_in(files)
            (wasm.workspace / "x").unlink()
            (wasm.workspace / "x").mkdir()
            (files / "x").write_text("written meanwhile")
            wasm.move_back(files)
            assert wasm.owner() is None
        else:
            slot = ContainerSlot.make(tmp_path / engine / "pool", uid=os.getuid(), gid=os.getgid())
            workspace = WorkspacePaths(files, site)
            lend(files, slot.files)
            (slot.files / "x").unlink()
            (slot.files / "x").mkdir()
            (files / "x").write_text("written meanwhile")
            container_give_back(slot, workspace)
        outcomes.append(tree(files))
    assert outcomes[0] == outcomes[1] == {"x": "<dir>"}
