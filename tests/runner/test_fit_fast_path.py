"""`fits_whole` lets the service skip the host-I/O thread for a run's result: only when
`fit_run` would give the result back unchanged (text within the budget, no image to check),
and never when the text must be cut and saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.tools._fit import Shown, fit_run, fits_whole
from sandboxes import Image, RunResult, Usage

BUDGET = 100
PNG = Image("plot.png", "image/png", b"\x89PNG\r\n\x1a\n")


def _result(stdout: str = "", stderr: str = "", **extra: object) -> RunResult:
    return RunResult("ok", stdout, stderr, 0, Usage(wall_ms=1.0), **extra)  # type: ignore[arg-type]


CASES = {
    "empty": (_result(), True),
    "small": (_result("hello\n"), True),
    "both streams at the budget": (_result("a" * 60, "b" * 40), True),
    "one byte over": (_result("a" * 60, "b" * 41), False),
    "characters fit, UTF-8 bytes do not": (_result("é" * 60), False),
    "multi-byte within the budget": (_result("é" * 50), True),
    "an image sent (checked on the thread)": (_result("x", images=(PNG,)), False),
    "an image file written (read on the thread)": (
        _result("x", files_written=("out/plot.SVG",)),
        False,
    ),
    "other files written": (_result("x", files_written=("data.csv", "notes.txt")), True),
}


@pytest.mark.parametrize(("result", "fits"), CASES.values(), ids=CASES.keys())
def test_only_a_result_that_fitting_leaves_alone_skips_the_thread(
    result: RunResult, fits: bool, tmp_path: Path
) -> None:
    assert fits_whole(result, BUDGET) is fits
    fitted = fit_run(result, files=tmp_path, text_bytes=BUDGET, image_bytes=1 << 20)
    if fits:
        assert fitted == (result, Shown())
    elif not (result.images or result.files_written):
        assert fitted[0] != result  # the text was cut (and saved)
