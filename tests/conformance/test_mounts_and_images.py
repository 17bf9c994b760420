"""Images and operator mounts look the same on every engine: an image the code writes comes
back as the same block and `images:` line; `/mnt/ro` reads and refuses writes, `/mnt/rw`
writes land in the host folder and in `files_written`."""

from __future__ import annotations

import base64
import secrets

import pytest

from ._harness import (
    PNG,
    RO_TEXT,
    RUN_OK,
    STRUCTURED_AS_JSON,
    Bench,
    Seen,
    exception_class,
    image_block,
    traceback_of,
)

pytestmark = pytest.mark.anyio


def _write_png(path: str) -> str:
    encoded = base64.b64encode(PNG).decode()
    return f"import base64\nwritten = open({path!r}, 'wb').write(base64.b64decode({encoded!r}))\n"


async def test_image_in_the_workspace_from_run_python_code(bench: Bench, session: str) -> None:
    answer = await bench.call("run_python_code", {"code": _write_png("dot.png")}, session=session)
    text = "successfully ran python code\n\nimages: dot.png"
    assert answer == Seen(False, (("text", text), image_block(PNG)), None)


async def test_image_in_the_workspace_from_pyodide_execute(bench: Bench, session: str) -> None:
    code = _write_png("/workspace/dot.png")
    answer = await bench.call("pyodide_execute", {"code": code}, session=session)
    text = "images: /workspace/dot.png"
    assert answer == Seen(False, (("text", text), image_block(PNG)), None)


async def test_image_in_the_rw_mount_from_run_code(bench: Bench, session: str) -> None:
    name = f"dot-{secrets.token_hex(4)}.png"
    try:
        answer = await bench.call(
            "run_code", {"code": _write_png(f"/mnt/rw/{name}")}, session=session
        )
        on_host = (bench.rw / name).read_bytes()
    finally:
        (bench.rw / name).unlink(missing_ok=True)
    written = [f"/mnt/rw/{name}"]
    expected = {**RUN_OK, "images": written, "files_written": written}
    assert answer == Seen(False, (("text", STRUCTURED_AS_JSON), image_block(PNG)), expected)
    assert on_host == PNG


async def test_read_the_ro_mount(bench: Bench, session: str) -> None:
    code = "print(open('/mnt/ro/notes.txt').read(), end='')"
    answer = await bench.call("run_code", {"code": code}, session=session)
    assert answer == Seen(False, (("text", STRUCTURED_AS_JSON),), {**RUN_OK, "stdout": RO_TEXT})


async def test_write_to_the_ro_mount_is_refused(bench: Bench, session: str) -> None:
    before = sorted(p.name for p in bench.ro.iterdir())
    code = "open('/mnt/ro/new.txt', 'w').write('x')"
    answer = await bench.call("run_code", {"code": code}, session=session)
    assert answer.structured is not None
    found = answer.structured
    # The boundary's own refusal: EACCES/EPERM (PermissionError) from wasmtime, Pyodide and
    # gVisor; EROFS (OSError) from a read-only bind mount under runc. Both are an OSError
    # saying the write was refused; nothing else may differ.
    refusals = ("Permission denied", "Operation not permitted", "Read-only file system")
    assert exception_class(found["error"]) in ("PermissionError", "OSError")
    assert any(words in found["error"] for words in refusals), found["error"]
    assert found == {
        **RUN_OK,
        "status": "error",
        "stderr": traceback_of(found),
        "exit_code": 1,
        "error": found["error"],
    }
    assert answer.is_error
    assert sorted(p.name for p in bench.ro.iterdir()) == before
