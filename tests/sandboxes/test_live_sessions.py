"""The rules every engine's live interpreters share (`LiveSessions`), with saved interpreters:
reclaimed or idle ones are paused to disk and come back `kept`; a loaded one waits for its
session; a bound on what waits on disk; a save that fails ends the interpreter as before.
Pure logic: the interpreters are names and the save hook writes a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxes import ExecutionPlan, Limits, Program, SandboxError, WorkspacePaths, session_key
from sandboxes._live import NO_ROOM_ON_DISK, RECLAIMED, LiveSessions

pytestmark = pytest.mark.anyio


class Interpreters:
    """Names for interpreters; `save` writes the name into the folder, `close` notes it."""

    def __init__(self, *, saves: bool = True) -> None:
        self.closed: list[str] = []
        self.saves = saves

    async def close(self, name: str) -> None:
        self.closed.append(name)

    async def save(self, name: str, folder: Path) -> None:
        if not self.saves:
            raise SandboxError("cannot save this one")
        (folder / "state").write_text(name)


def _plan(session: str, tmp_path: Path, grant: str = "g") -> ExecutionPlan:
    return ExecutionPlan(
        decision_id=f"d-{session}",
        engine="fake",
        program=Program("code", "pass"),
        limits=Limits(),
        workspace=WorkspacePaths(tmp_path / "files", tmp_path / "site"),
        session_id=session,
        grant=grant,
    )


def _live(tmp_path: Path, made: Interpreters, **kwargs: int) -> LiveSessions[str]:
    return LiveSessions(
        "fake",
        made.close,
        max_sessions=kwargs.pop("max_sessions", 1),
        idle_s=600,
        save=made.save,
        images_root=tmp_path / "saved",
        **kwargs,
    )


async def test_a_reclaimed_interpreter_is_paused_to_disk_and_comes_back_kept(
    tmp_path: Path,
) -> None:
    made = Interpreters()
    live = _live(tmp_path, made)
    first, second = _plan("a", tmp_path), _plan("b", tmp_path)
    live.add(first, "interpreter-a")

    await live.make_room(second)

    claim = live.claim(first.session_key)
    assert (claim.interpreter, claim.state) == (None, "kept")
    assert claim.image is not None and (claim.image / "state").read_text() == "interpreter-a"
    assert made.closed == ["interpreter-a"] and live.paused() == 1
    live.add(first, "resumed-a")  # the engine resumed it: the image goes
    assert not claim.image.exists() and live.paused() == 0


async def test_an_interpreter_that_cannot_be_saved_is_ended_and_its_session_told(
    tmp_path: Path,
) -> None:
    made = Interpreters(saves=False)
    live = _live(tmp_path, made)
    first = _plan("a", tmp_path)
    live.add(first, "interpreter-a")

    await live.make_room(_plan("b", tmp_path))

    claim = live.claim(first.session_key)
    assert (claim.state, claim.note, claim.image) == ("lost", RECLAIMED, None)


async def test_a_loaded_interpreter_waits_for_its_session_and_the_source_stays(
    tmp_path: Path,
) -> None:
    made = Interpreters()
    live = _live(tmp_path, made, max_sessions=4)
    source = tmp_path / "snapshot"
    source.mkdir()
    (source / "state").write_text("from a snapshot")
    key = session_key("g", "fork-1")

    await live.load(key, "g", source)

    claim = live.claim(key)
    assert claim.state == "kept" and claim.image is not None
    assert (claim.image / "state").read_text() == "from a snapshot"
    assert (source / "state").exists()  # placed as a copy (hard link): the snapshot stays
    live.discard_image(key, "damaged")
    assert live.claim(key).note == "its saved state could not be resumed: damaged"


async def test_beyond_max_images_the_oldest_is_discarded_and_its_session_told(
    tmp_path: Path,
) -> None:
    made = Interpreters()
    live = _live(tmp_path, made, max_sessions=4, max_images=2)
    source = tmp_path / "snapshot"
    source.mkdir()
    (source / "state").write_text("x")
    keys = [session_key("g", f"fork-{i}") for i in range(3)]

    for key in keys:
        await live.load(key, "g", source)

    assert live.paused() == 2
    assert (live.claim(keys[0]).state, live.claim(keys[0]).note) == ("lost", NO_ROOM_ON_DISK)
    assert [live.claim(k).state for k in keys[1:]] == ["kept", "kept"]


async def test_ending_a_session_removes_its_waiting_image(tmp_path: Path) -> None:
    made = Interpreters()
    live = _live(tmp_path, made, max_sessions=4)
    source = tmp_path / "snapshot"
    source.mkdir()
    (source / "state").write_text("x")
    key = session_key("g", "fork-1")
    await live.load(key, "g", source)
    image = live.claim(key).image
    assert image is not None

    assert await live.end(key) is True

    assert not image.exists() and live.claim(key).state == "new"
