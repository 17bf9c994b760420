"""A session's Pyodide interpreter saved in a folder (snapshots, forks, sessions paused to
disk): what the folder holds, and the check a folder passes before it is resumed.

The folder: `heap.bin` (a Pyodide memory snapshot of the interpreter: its wasm memory and the
JS-bridge slots it holds, the format `loadPyodide({_loadSnapshot})` reads), `files.json` (what
it made in its in-memory file system outside the host's folders, and its working folder), and
`manifest.json`, written last: the engine kind, the Pyodide release, the build fingerprint
(Pyodide, Deno, `host.mjs` and `_guest.py`: the harness is part of the saved memory) and the
sizes of the other two files. A folder saved by another engine or build is refused.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .._errors import SandboxError, StateImageRefused
from ._assets import PYODIDE_VERSION, build_fingerprint

KIND = "pyodide"
FORMAT = 1
MANIFEST = "manifest.json"
HEAP = "heap.bin"
FILES = "files.json"
MAX_HEAP_BYTES = 4 * 1024**3 + 1024 * 1024
"""wasm32's whole address space, plus the snapshot's header."""
MAX_FILES_BYTES = 1024**3
"""The interpreter's own files (outside the host's folders), base64 in JSON."""


class SaveRefused(SandboxError):
    """The interpreter holds state a resumed one could not have; nothing was saved.

    Attributes:
        reason: Why, in words (from the interpreter's host, checked to be text).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the pyodide session's interpreter cannot be saved: {reason}")
        self.reason = reason


def write_manifest(folder: Path, *, heap_bytes: int, files_bytes: int) -> None:
    """Write `manifest.json` into `folder`, whose heap and files are complete."""
    manifest = {
        "engine": KIND,
        "format": FORMAT,
        "pyodide": PYODIDE_VERSION,
        "build": build_fingerprint(),
        "heap_bytes": heap_bytes,
        "files_bytes": files_bytes,
    }
    partial = folder / (MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, folder / MANIFEST)


def check(folder: Path) -> int:
    """Check that `folder` holds an interpreter this build can resume; its heap's size.

    Raises:
        StateImageRefused: it does not (another engine's or build's, or incomplete).
    """
    try:
        manifest: Any = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StateImageRefused(
            KIND, f"{folder / MANIFEST} is missing or unreadable ({exc})"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("engine") != KIND:
        found = manifest.get("engine") if isinstance(manifest, dict) else manifest
        raise StateImageRefused(KIND, f"it was saved by the {found!r} engine, not {KIND!r}")
    expected = {"format": FORMAT, "pyodide": PYODIDE_VERSION, "build": build_fingerprint()}
    for field, value in expected.items():
        if manifest.get(field) != value:
            raise StateImageRefused(
                KIND, f"its {field} is {manifest.get(field)!r}, this server's is {value!r}"
            )
    for name, field, cap in (
        (HEAP, "heap_bytes", MAX_HEAP_BYTES),
        (FILES, "files_bytes", MAX_FILES_BYTES),
    ):
        size = manifest.get(field)
        try:
            st = os.stat(folder / name, follow_symlinks=False)
        except OSError as exc:
            raise StateImageRefused(KIND, f"{name} is missing ({exc.strerror})") from None
        regular = stat.S_ISREG(st.st_mode)
        if not regular or not isinstance(size, int) or not 0 < size <= cap or st.st_size != size:
            raise StateImageRefused(
                KIND, f"{name} holds {st.st_size} bytes, its manifest says {size!r}"
            )
    return int(manifest["heap_bytes"])
