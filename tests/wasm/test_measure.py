"""The worker measures a call's workspace around the run (`_measure`): its answer says what the
run wrote, what the workspace holds (allocated bytes, inodes) and whether that is past the
budget; links to files outside are dropped before the run, and the server logs them; the host
refuses an answer that does not say these."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxes import DiskUsage, ExecutionPlan, Limits, Program, WasmEngine, WorkspacePaths
from sandboxes.wasm._measure import dropped_links, has_images, measured

from ._requests import InProcessWorker


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessWorker]:
    made = InProcessWorker(tmp_path_factory.mktemp("measure"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def files(worker: InProcessWorker, tmp_path: Path) -> Path:
    """A fresh workspace of this test's own for the module's worker."""
    folder = tmp_path / "files"
    folder.mkdir()
    return folder


def test_an_answer_says_what_the_run_wrote_and_what_the_workspace_holds(
    worker: InProcessWorker, files: Path
) -> None:
    (files / "kept.txt").write_text("before")
    answer = worker.run(
        "open('new.bin', 'wb').write(b'x' * 20000)\nopen('kept.txt', 'w').write('after!')",
        files=str(files),
        workspace_bytes=1 << 20,
    )
    written, held, over = measured(answer)
    assert written == ("kept.txt", "new.bin")
    assert held.files == 2 and held.complete
    assert held.bytes >= 20000 + 4096  # allocated blocks, not apparent sizes
    assert over is None


def test_a_workspace_the_run_left_past_its_budget_is_said_over(
    worker: InProcessWorker, files: Path
) -> None:
    answer = worker.run(
        "import os\nopen('big.bin', 'wb').write(os.urandom(64 * 1024))",
        files=str(files),
        workspace_bytes=16 * 1024,
    )
    _, held, over = measured(answer)
    assert over == held.bytes and over > 16 * 1024


def test_a_hard_link_to_a_file_outside_is_dropped_before_the_run(
    worker: InProcessWorker, files: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "host-secret.txt"
    outside.write_text("the host's")
    os.link(outside, files / "linked.txt")
    answer = worker.run("import os\nprint(sorted(os.listdir()))", files=str(files))
    assert answer["stdout"].strip() == "[]"
    assert dropped_links(answer) == ("linked.txt",)
    assert not (files / "linked.txt").exists()
    assert outside.read_text() == "the host's"


@pytest.mark.anyio
async def test_the_server_logs_the_links_its_worker_dropped(
    wasm_engine: WasmEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files, site = tmp_path / "files", tmp_path / "site"
    files.mkdir()
    site.mkdir()
    outside = tmp_path / "host-secret.txt"
    outside.write_text("the host's")
    os.link(outside, files / "linked.txt")
    plan = ExecutionPlan(
        decision_id="test",
        engine="wasm",
        program=Program("code", "print('ran')"),
        limits=Limits(),
        workspace=WorkspacePaths(files, site),
        session_id="test",
    )
    with caplog.at_level(logging.WARNING, logger="sandgate.files"):
        result = await wasm_engine.run(plan)
    assert (result.status, result.stdout) == ("ok", "ran\n")
    assert "unlinked 1 hard link(s) to files outside the workspace" in caplog.text
    assert "linked.txt" in caplog.text


GOOD: dict[str, Any] = {"written": ["a.png"], "held": [4096, 1, True], "over": None}


@pytest.mark.parametrize(
    "broken",
    [
        {"written": None},
        {"written": ["a", 1]},
        {"held": [4096, 1]},
        {"held": [4096, True, True]},
        {"held": [4096, 1, "yes"]},
        {"over": "4096"},
        {"dropped_links": "linked.txt"},
    ],
)
def test_an_answer_that_does_not_say_what_the_run_wrote_is_refused(
    broken: dict[str, Any],
) -> None:
    assert measured(GOOD) == (("a.png",), DiskUsage(4096, 1, True), None)
    assert dropped_links(GOOD) == ()
    with pytest.raises(ValueError, match="a worker answer's"):
        answer = {**GOOD, **broken}
        measured(answer)
        dropped_links(answer)


def test_images_are_read_only_when_an_image_was_written() -> None:
    assert has_images(("plot.PNG",)) and has_images(("a.txt", "out/fig.jpg"))
    assert not has_images(("a.txt", "png", "data.csv"))
