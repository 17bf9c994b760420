"""What of a run goes to the model: printed text within the result's budget (head and tail
around an `… N bytes omitted …` marker, the whole stream saved in the session's workspace and
linked as a resource) and images within their cap (re-encoded or scaled down, never dropped
without a note naming the file and why). Applied once, after the run, on every engine."""

from __future__ import annotations

import contextlib
import io
import math
import os
import secrets
import stat
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import quote

from sandboxes import FileRefused, Image, RunResult, SandboxError, open_folder, read_regular_file

from .._mounts import WORKSPACE_GUEST_PATH
from . import _paths

OUTPUT_FOLDER = ".sandgate/output"
"""Where the whole of a cut stream is saved, relative to the session's workspace."""
WORKSPACE_URI = "file:///workspace/"
"""The resource URI prefix of the session's workspace (`runner/serving/_resources.py`)."""
MAX_SAVED_OUTPUTS = 16
"""Saved streams a workspace keeps: older ones are removed as new ones come, so outputs that
are saved call after call do not fill the session's workspace budget."""
MAX_IMAGES_SHOWN = 16
"""Images one result carries (the engines collect at most as many)."""
MAX_SOURCE_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest image file the runner reads to scale down (one the engine did not send)."""
MAX_SOURCE_PIXELS = 40_000_000
"""Largest image, in pixels, the runner decodes to scale down (decompression bombs)."""
_RASTER = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
_IMAGE_SUFFIXES = frozenset({*_RASTER, ".gif", ".svg"})

Stream = Literal["stdout", "stderr"]
_JPEG = (("JPEG", "image/jpeg"),)
_PNG_THEN_JPEG = (("PNG", "image/png"), *_JPEG)


@dataclass(frozen=True, slots=True)
class SavedOutput:
    """The whole of a stream cut to fit the result, saved in the session's workspace.

    Attributes:
        stream: `stdout` or `stderr`.
        path: Where code sees it (`/workspace/.sandgate/output/…`).
        uri: The resource that reads it (`file:///workspace/.sandgate/output/…`).
        size_bytes: Its size (UTF-8).
    """

    stream: Stream
    path: str
    uri: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Shown:
    """What the result says beyond the run's own fields: saved streams and notes."""

    saved: tuple[SavedOutput, ...] = ()
    notes: tuple[str, ...] = ()


def fit_run(
    result: RunResult, *, files: Path, text_bytes: int, image_bytes: int, call_id: str | None = None
) -> tuple[RunResult, Shown]:
    """`result` as the model gets it, and what was done to it (blocking: file I/O).

    Args:
        files: The session's workspace on the host (cut streams are saved there).
        text_bytes: The budget of stdout and stderr together, UTF-8 bytes.
        image_bytes: The cap of each image, bytes of the encoded file.
        call_id: Names the saved files (default: the time and a random tag).
    """
    call_id = call_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    stdout, stderr, saved, notes = _fit_text(result, files, text_bytes, call_id)
    images, image_notes = _fit_images(result, files, image_bytes)
    fitted = replace(result, stdout=stdout, stderr=stderr, images=images)
    return fitted, Shown(saved, (*notes, *image_notes))


def fits_whole(result: RunResult, text_bytes: int) -> bool:
    """Whether `fit_run` would give `result` back as it is (no file I/O, so no thread): no
    image sent or written, and stdout and stderr within `text_bytes` together."""
    if result.images or any(
        PurePosixPath(path).suffix.lower() in _IMAGE_SUFFIXES for path in result.files_written
    ):
        return False
    if len(result.stdout) + len(result.stderr) > text_bytes:  # characters <= UTF-8 bytes
        return False
    return _utf8_size(result.stdout) + _utf8_size(result.stderr) <= text_bytes


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


# -- text --------------------------------------------------------------------------------------


def _fit_text(
    result: RunResult, files: Path, budget: int, call_id: str
) -> tuple[str, str, tuple[SavedOutput, ...], tuple[str, ...]]:
    streams: dict[Stream, str] = {"stdout": result.stdout, "stderr": result.stderr}
    sizes = {name: len(text.encode("utf-8")) for name, text in streams.items()}
    allowed = _shares(sizes["stdout"], sizes["stderr"], budget)
    saved: list[SavedOutput] = []
    notes: list[str] = []
    shown: dict[Stream, str] = dict(streams)
    for name, text in streams.items():
        if sizes[name] <= allowed[name]:
            continue
        rel = f"{OUTPUT_FOLDER}/{call_id}.{name}.txt"
        try:
            _paths.write_text(files, rel, text)
        except (OSError, FileRefused, SandboxError) as exc:
            notes.append(
                f"the whole {name} ({sizes[name]} bytes) could not be saved in the workspace "
                f"({type(exc).__name__}): only its head and tail are shown"
            )
            where = None
        else:
            where = f"{WORKSPACE_GUEST_PATH}/{rel}"
            uri = WORKSPACE_URI + quote(rel)
            saved.append(SavedOutput(name, where, uri, sizes[name]))
        shown[name] = head_and_tail(text, allowed[name], whole=where)
    if saved:
        _prune(files)
    return shown["stdout"], shown["stderr"], tuple(saved), tuple(notes)


def _prune(files: Path) -> None:
    """Remove all but the newest `MAX_SAVED_OUTPUTS` regular files of the output folder
    (walked by descriptor; links and folders the code put there are left alone)."""
    try:
        fd = open_folder(files, OUTPUT_FOLDER.split("/"))
    except (FileRefused, OSError):
        return
    try:
        found: list[tuple[int, str]] = []
        for name in os.listdir(fd):
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    found.append((st.st_mtime_ns, name))
        for _, name in sorted(found, reverse=True)[MAX_SAVED_OUTPUTS:]:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def _shares(stdout: int, stderr: int, budget: int) -> dict[Stream, int]:
    """Each stream's part of `budget`: both whole when they fit, else a stream under half
    the budget whole and the other the rest, else half each."""
    half = budget // 2
    if stdout + stderr <= budget:
        return {"stdout": stdout, "stderr": stderr}
    if stderr <= half:
        return {"stdout": budget - stderr, "stderr": stderr}
    if stdout <= half:
        return {"stdout": stdout, "stderr": budget - stdout}
    return {"stdout": budget - half, "stderr": half}


def head_and_tail(text: str, limit: int, *, whole: str | None = None) -> str:
    """`text` within `limit` UTF-8 bytes: its head and tail around a marker saying how many
    bytes were left out (and where the whole is, when saved). `text` itself when it fits."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    where = f"; the whole output is in {whole}" if whole else ""
    marker = f"\n… {len(data)} bytes omitted{where} …\n"
    keep = max(limit - len(marker.encode("utf-8")), 0)
    head = data[: keep - keep // 2].decode("utf-8", errors="ignore")
    tail = data[len(data) - keep // 2 :].decode("utf-8", errors="ignore") if keep // 2 else ""
    omitted = len(data) - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
    return f"{head}\n… {omitted} bytes omitted{where} …\n{tail}"


# -- images ------------------------------------------------------------------------------------


def _fit_images(
    result: RunResult, files: Path, cap: int
) -> tuple[tuple[Image, ...], tuple[str, ...]]:
    images: list[Image] = []
    notes: list[str] = []
    for image in result.images:
        fitted, note = fit_image(image, cap)
        if fitted is not None:
            images.append(fitted)
        if note:
            notes.append(note)
    sent = {image.path for image in result.images}
    for path in result.files_written:
        if path in sent or PurePosixPath(path).suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        shown = path if path.startswith("/") else f"{WORKSPACE_GUEST_PATH}/{path}"
        if len(images) >= MAX_IMAGES_SHOWN:
            notes.append(f"image {shown} not sent: a result carries at most {MAX_IMAGES_SHOWN}")
            continue
        data = None if path.startswith("/") else _read(files, path)
        if data is None:
            notes.append(
                f"image {shown} not sent: it is over {MAX_SOURCE_IMAGE_BYTES} bytes, not a "
                "regular file, or outside the workspace; read it as a resource"
            )
            continue
        mime = _RASTER.get(PurePosixPath(path).suffix.lower(), "image/gif")
        fitted, note = fit_image(Image(path, mime, data), cap)
        if fitted is not None:
            images.append(fitted)
        if note:
            notes.append(note)
    return tuple(images), tuple(notes)


def _read(files: Path, rel: str) -> bytes | None:
    return read_regular_file(files, rel, max_bytes=MAX_SOURCE_IMAGE_BYTES)


def fit_image(image: Image, cap: int) -> tuple[Image | None, str | None]:
    """`image` within `cap` bytes, and a note when it was changed or left out: re-encoded
    (PNG, optimized) and, if still too big, scaled down (PNG, then JPEG) until it fits."""
    size = len(image.data)
    shown = image.path if image.path.startswith("/") else f"{WORKSPACE_GUEST_PATH}/{image.path}"
    if size <= cap:
        return image, None
    if image.mime_type not in _RASTER.values():
        return None, (
            f"image {shown} not sent: it is {size} bytes, over the result's image cap of {cap} "
            f"bytes, and {image.mime_type} cannot be scaled; read it as a resource"
        )
    try:
        encoded = _shrink(image.data, cap)
    except (OSError, ValueError, Warning) as exc:
        return None, (
            f"image {shown} not sent: it is {size} bytes, over the result's image cap of {cap} "
            f"bytes, and could not be scaled down ({type(exc).__name__}: {exc})"
        )
    if encoded is None:
        return None, (
            f"image {shown} not sent: it is {size} bytes and even scaled down does not fit the "
            f"result's image cap of {cap} bytes"
        )
    data, mime, width, height = encoded
    note = (
        f"image {shown} is {size} bytes, over the result's image cap of {cap} bytes: sent "
        f"as {width}x{height} {mime} ({len(data)} bytes); the file itself is unchanged"
    )
    return Image(image.path, mime, data), note


def _shrink(data: bytes, cap: int) -> tuple[bytes, str, int, int] | None:
    from PIL import Image as Pil  # only when an image is too big: keeps start-up light

    with warnings.catch_warnings():
        warnings.simplefilter("error", Pil.DecompressionBombWarning)
        with Pil.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_SOURCE_PIXELS:
                raise ValueError(
                    f"{opened.width}x{opened.height} is over {MAX_SOURCE_PIXELS} pixels"
                )
            source = opened.format
            picture = opened.convert("RGBA") if opened.mode not in ("RGB", "RGBA") else opened
            picture.load()
    scale = 1.0
    for _ in range(8):
        width = max(1, int(picture.width * scale))
        height = max(1, int(picture.height * scale))
        sized = picture if scale == 1.0 else picture.resize((width, height), Pil.Resampling.LANCZOS)
        # a PNG written again at its own size is about as big: JPEG first, then scale down
        formats = _JPEG if scale == 1.0 and source == "PNG" else _PNG_THEN_JPEG
        for fmt, mime in formats:
            out = io.BytesIO()
            if fmt == "PNG":
                sized.save(out, "PNG", optimize=True)
            else:
                sized.convert("RGB").save(out, "JPEG", quality=85, optimize=True)
            if out.tell() <= cap:
                return out.getvalue(), mime, width, height
            last = out.tell()
        scale *= min(0.9, math.sqrt(cap / last) * 0.95)
    return None
