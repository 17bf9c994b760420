"""Fitting a run to what one tool result gives a model (runner/tools/_fit.py): text cut to a
budget around a marker and saved whole, images scaled under a cap or left out with a note."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from PIL import Image as Pil

from runner.tools._fit import (
    MAX_SAVED_OUTPUTS,
    OUTPUT_FOLDER,
    fit_image,
    fit_run,
    head_and_tail,
)
from sandboxes import Image, RunResult, Usage

KIB = 1024


def ran(stdout: str = "", stderr: str = "", **extra: object) -> RunResult:
    return RunResult("ok", stdout, stderr, 0, Usage(wall_ms=1.0), **extra)  # type: ignore[arg-type]


def noise_png(side: int) -> bytes:
    """A PNG of random pixels: it does not compress, so its size is about 3 bytes a pixel."""
    rng = random.Random(side)
    picture = Pil.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def test_text_within_the_budget_is_left_alone(tmp_path: Path) -> None:
    result = ran("a" * 100, "b" * 100)
    fitted, shown = fit_run(result, files=tmp_path, text_bytes=4 * KIB, image_bytes=64 * KIB)
    assert fitted == result and shown.saved == () and shown.notes == ()
    assert not (tmp_path / ".sandgate").exists()


def test_a_long_stdout_keeps_head_and_tail_and_is_saved_whole(tmp_path: Path) -> None:
    text = "".join(f"line {i}\n" for i in range(100_000))
    fitted, shown = fit_run(
        ran(text), files=tmp_path, text_bytes=8 * KIB, image_bytes=64 * KIB, call_id="c1"
    )
    assert len(fitted.stdout.encode()) <= 8 * KIB
    assert fitted.stdout.startswith("line 0\nline 1\n")
    assert fitted.stdout.endswith("line 99999\n")
    (saved,) = shown.saved
    assert saved.stream == "stdout" and saved.size_bytes == len(text)
    assert saved.path == f"/workspace/{OUTPUT_FOLDER}/c1.stdout.txt"
    assert saved.uri == f"file:///workspace/{OUTPUT_FOLDER}/c1.stdout.txt"
    assert (tmp_path / OUTPUT_FOLDER / "c1.stdout.txt").read_text() == text
    assert saved.path in fitted.stdout


def test_the_marker_counts_exactly_the_bytes_left_out() -> None:
    text = "é" * 5000  # two bytes a character: cuts must not split one
    shown = head_and_tail(text, 1000)
    head, marker, tail = shown.split("\n")
    omitted = int(marker.split(" ")[1])
    assert set(head + tail) == {"é"}
    assert len(head.encode()) + len(tail.encode()) + omitted == len(text.encode())
    assert len(shown.encode()) <= 1000


def test_a_small_stderr_stays_whole_while_stdout_gives_way(tmp_path: Path) -> None:
    fitted, shown = fit_run(
        ran("o" * 50 * KIB, "Traceback: the error\n"),
        files=tmp_path,
        text_bytes=4 * KIB,
        image_bytes=64 * KIB,
    )
    assert fitted.stderr == "Traceback: the error\n"
    assert len((fitted.stdout + fitted.stderr).encode()) <= 4 * KIB
    assert [s.stream for s in shown.saved] == ["stdout"]


def test_a_planted_link_is_not_followed_and_the_cut_is_said(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    files = tmp_path / "files"
    files.mkdir()
    os.symlink(outside, files / ".sandgate")
    fitted, shown = fit_run(ran("x" * 20 * KIB), files=files, text_bytes=4 * KIB, image_bytes=1)
    assert shown.saved == () and list(outside.iterdir()) == []
    assert len(fitted.stdout.encode()) <= 4 * KIB
    assert any("could not be saved" in note for note in shown.notes)


def test_an_image_over_the_cap_is_scaled_under_it_and_the_note_names_it() -> None:
    data = noise_png(700)  # ~1.5 MB
    cap = 400 * KIB
    fitted, note = fit_image(Image("plots/noise.png", "image/png", data), cap)
    assert fitted is not None and len(fitted.data) <= cap
    assert note is not None and "/workspace/plots/noise.png" in note and str(len(data)) in note
    with Pil.open(io.BytesIO(fitted.data)) as opened:  # what was sent is what the note says
        assert fitted.mime_type == Pil.MIME[opened.format or ""]
        assert f"{opened.width}x{opened.height} {fitted.mime_type}" in note


def test_an_image_a_jpeg_cannot_fit_is_scaled_down() -> None:
    data = noise_png(700)
    fitted, _ = fit_image(Image("noise.png", "image/png", data), 64 * KIB)
    assert fitted is not None and len(fitted.data) <= 64 * KIB
    with Pil.open(io.BytesIO(fitted.data)) as opened:
        assert opened.width < 700 and opened.height < 700


def test_an_svg_over_the_cap_is_left_out_with_a_note() -> None:
    svg = Image("big.svg", "image/svg+xml", b"<svg>" + b" " * 200 * KIB + b"</svg>")
    fitted, note = fit_image(svg, 100 * KIB)
    assert fitted is None and note is not None and "big.svg" in note


def test_an_image_the_engine_did_not_send_is_read_scaled_and_sent(tmp_path: Path) -> None:
    data = noise_png(600)
    (tmp_path / "big.png").write_bytes(data)
    result = ran(files_written=("big.png", "notes.txt"))
    fitted, shown = fit_run(result, files=tmp_path, text_bytes=4 * KIB, image_bytes=300 * KIB)
    (image,) = fitted.images
    assert image.path == "big.png" and len(image.data) <= 300 * KIB
    assert len(shown.notes) == 1 and "/workspace/big.png" in shown.notes[0]


def test_an_unsendable_image_is_never_dropped_silently(tmp_path: Path) -> None:
    result = ran(files_written=("/mnt/data/huge.png",))
    fitted, shown = fit_run(result, files=tmp_path, text_bytes=4 * KIB, image_bytes=64 * KIB)
    assert fitted.images == ()
    (note,) = shown.notes
    assert "/mnt/data/huge.png" in note and "not sent" in note


@pytest.mark.parametrize("cap", [64 * KIB, 256 * KIB])
def test_a_decompression_bomb_is_refused_not_decoded(cap: int) -> None:
    picture = Pil.new("1", (8000, 8000))  # 64 M pixels, a few KiB as PNG
    out = io.BytesIO()
    picture.save(out, "PNG")
    padded = out.getvalue() + b"\0" * cap  # over the cap, so the runner would scale it
    fitted, note = fit_image(Image("bomb.png", "image/png", padded), cap)
    assert fitted is None and note is not None and "pixels" in note


def test_saved_outputs_keep_only_the_newest(tmp_path: Path) -> None:
    for i in range(MAX_SAVED_OUTPUTS + 4):
        fit_run(
            ran("x" * 8 * KIB), files=tmp_path, text_bytes=1024, image_bytes=1, call_id=f"c{i:02}"
        )
    kept = sorted(p.name for p in (tmp_path / OUTPUT_FOLDER).iterdir())
    newest = [f"c{i:02}.stdout.txt" for i in range(4, MAX_SAVED_OUTPUTS + 4)]
    assert kept == newest
