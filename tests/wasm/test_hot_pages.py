"""The pages every call writes are made writable as a guest opens (`_hot`): learned once per
shape and module by the worker's own calibration turn, populated without changing a byte."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxes.wasm._hot import PAGE, HotPages, runs_of, written_pages
from sandboxes.wasm._prepared import Shape

from ._requests import InProcessWorker

SHAPE = Shape(256 << 20, None)


def test_runs_of_pages_are_consecutive_runs_of_the_lowest_pages() -> None:
    assert runs_of([7, 1, 2, 3, 9, 8]) == ((1, 3), (7, 3))
    assert runs_of(range(10), limit=4) == ((0, 4),)
    assert runs_of([]) == ()


def test_only_pages_written_since_within_the_opening_size_are_learned() -> None:
    hot = HotPages.learn(before={0, 1}, after={0, 1, 2, 3, 50}, size=10 * PAGE)
    assert hot.runs == ((2, 2),) and hot.pages == 2


def test_a_memory_of_another_size_is_not_populated() -> None:
    assert HotPages(((0, 1),), 10 * PAGE).populate(0, 11 * PAGE) is False


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessWorker]:
    made = InProcessWorker(tmp_path_factory.mktemp("hot"))
    try:
        made.run("pass")  # the shape's first call: its image is taken, then its pages learned
        yield made
    finally:
        made.close()


def test_the_worker_learns_the_pages_a_call_writes_once_per_shape(
    worker: InProcessWorker,
) -> None:
    imaged = worker.host.imaged
    assert imaged is not None
    assert worker.run("print(6 * 7)")["stdout"] == "42\n"
    hot = imaged.hot[(SHAPE, SHAPE in imaged.derived)]
    assert hot is not None and 20 < hot.pages < 1024, hot


def test_a_guest_opens_with_those_pages_written_and_its_memory_unchanged(
    worker: InProcessWorker,
) -> None:
    imaged = worker.host.imaged
    assert imaged is not None
    image = imaged.image(SHAPE, worker.host.build())
    assert image is not None
    key = (SHAPE, SHAPE in imaged.derived)
    hot = imaged.hot[key]
    assert hot is not None
    grants, env = imaged.grants(SHAPE, str(worker.files))
    populated = imaged._from_image(image, grants, env, worker.host.door)
    imaged.hot[key] = None  # the same image, opened without populating
    plain = imaged._from_image(image, grants, env, worker.host.door)
    imaged.hot[key] = hot
    try:
        size = populated.memory.data_len(populated.store)
        written = written_pages(populated.address(), size)
        assert written is not None
        wanted = {first + i for first, count in hot.runs for i in range(count)}
        assert wanted <= written, "every learned page is writable before any code runs"
        unpopulated = written_pages(plain.address(), size)
        assert unpopulated is not None and not wanted <= unpopulated
        assert populated.memory.read(populated.store, 0, size) == plain.memory.read(
            plain.store, 0, size
        ), "populating changed no byte"
        done = populated.turn(
            "print('still fresh')", deadline_s=30, output_bytes=None, cancel=threading.Event()
        )
        assert done.stdout == b"still fresh\n" and populated.turns == 1
    finally:
        populated.close()
        plain.close()


def test_calls_from_populated_guests_answer_as_before(
    worker: InProcessWorker, tmp_path: Path
) -> None:
    for n in range(3):
        done = worker.run(f"out = 'hello {n}'", variable="out", prepare_next=True)
        assert done["ok"] and done["embedded"] and done["report"]["value"] == f"hello {n}", done
