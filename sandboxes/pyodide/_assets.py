"""Pyodide assets: fetch the pinned npm package once, find Deno, build the memory snapshot."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .._errors import EngineUnavailable

Progress = Callable[[str], None]

HERE = Path(__file__).resolve().parent
HOST_SCRIPT = HERE / "host.mjs"
GUEST_SCRIPT = HERE / "_guest.py"
LOCK_FILE = HERE / "package-lock.json"
PYODIDE_VERSION = "314.0.7"
"""The Pyodide release the engine runs; `package.json` and its lock pin the same one."""
NPM_REGISTRY = "https://registry.npmjs.org"
SNAPSHOT_TIMEOUT_S = 300.0
DOWNLOAD_TIMEOUT_S = 120.0
_REQUIRED = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip")
_READY_MARK = ".sandgate-ready"


def _quiet(line: str) -> None:
    del line


def default_assets_dir() -> Path:
    """`$SANDGATE_CACHE/pyodide`, else `$XDG_CACHE_HOME/sandgate/pyodide` (~/.cache/…)."""
    if env := os.environ.get("SANDGATE_CACHE"):
        return Path(env) / "pyodide"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sandgate" / "pyodide"


@dataclass(frozen=True, slots=True)
class Assets:
    """The files a Pyodide process reads: the npm package folder and the memory snapshot."""

    root: Path
    pyodide_dir: Path
    snapshot: Path


def find_deno() -> str:
    """The Deno binary shipped by the `deno` PyPI package (or `$SANDGATE_DENO`).

    Raises:
        EngineUnavailable: neither is there.
    """
    if env := os.environ.get("SANDGATE_DENO"):
        return env
    try:
        import deno
    except ImportError:
        raise EngineUnavailable(
            "the pyodide engine needs Deno: expected the `deno` Python package, found none; "
            "run `pip install deno`"
        ) from None
    found: str = deno.find_deno_bin()
    return found


def deno_version() -> str:
    """The version of the `deno` package (part of the snapshot's identity)."""
    try:
        return metadata.version("deno")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_fingerprint() -> str:
    """What an interpreter's memory depends on: the Pyodide and Deno releases, the host script
    and the guest harness (the base snapshot's name, and the build of a saved interpreter)."""
    digest = hashlib.sha256()
    for part in (PYODIDE_VERSION, deno_version()):
        digest.update(part.encode())
    for script in (HOST_SCRIPT, GUEST_SCRIPT):
        digest.update(script.read_bytes())
    return digest.hexdigest()[:16]


def _snapshot_name() -> str:
    return f"snapshot-{build_fingerprint()}.bin"


def locate(assets_dir: Path | None = None) -> Assets | None:
    """The assets under `assets_dir` if the Pyodide package is there (snapshot may be absent)."""
    root = (assets_dir or default_assets_dir()).resolve()
    folder = root / f"pyodide-{PYODIDE_VERSION}"
    if not (folder / _READY_MARK).is_file():
        return None
    return Assets(root=root, pyodide_dir=folder, snapshot=root / _snapshot_name())


def pinned_integrity() -> str:
    """The npm `integrity` (sha512, base64) of the pinned package, from the lock file."""
    lock = json.loads(LOCK_FILE.read_text(encoding="utf-8"))
    entry = lock["packages"]["node_modules/pyodide"]
    if entry["version"] != PYODIDE_VERSION:
        raise EngineUnavailable(
            f"package-lock.json pins pyodide {entry['version']}, expected {PYODIDE_VERSION}"
        )
    integrity: str = entry["integrity"]
    return integrity


def _check_integrity(tarball: Path, integrity: str) -> None:
    algo, _, expected = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, tarball.read_bytes()).digest()).decode()
    if got != expected:
        raise EngineUnavailable(
            f"the pyodide {PYODIDE_VERSION} tarball failed its integrity check: expected "
            f"{integrity}, got {algo}-{got}; delete {tarball.parent} and run setup again"
        )


def _fetch_tarball(into: Path, progress: Progress) -> Path:
    """`npm pack` the pinned package into `into`; plain HTTPS from the registry without npm."""
    npm = shutil.which("npm")
    if npm is not None:
        progress(f"pyodide: npm pack pyodide@{PYODIDE_VERSION}")
        done = subprocess.run(
            [npm, "pack", f"pyodide@{PYODIDE_VERSION}", "--pack-destination", str(into)],
            capture_output=True,
            text=True,
            timeout=DOWNLOAD_TIMEOUT_S * 5,
            check=False,
        )
        found = sorted(into.glob("pyodide-*.tgz"))
        if done.returncode == 0 and found:
            return found[0]
        progress(f"pyodide: npm pack failed ({done.stderr.strip()[-300:]}); trying HTTPS")
    registry = os.environ.get("NPM_CONFIG_REGISTRY", NPM_REGISTRY).rstrip("/")
    url = f"{registry}/pyodide/-/pyodide-{PYODIDE_VERSION}.tgz"
    target = into / f"pyodide-{PYODIDE_VERSION}.tgz"
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as answer, target.open("wb") as f:
        total = int(answer.headers.get("Content-Length") or 0)
        got, last = 0, 0.0
        while chunk := answer.read(1 << 20):
            f.write(chunk)
            got += len(chunk)
            if time.monotonic() - last > 1.0:
                last = time.monotonic()
                progress(f"pyodide: downloaded {got >> 20} of {total >> 20} MiB")
    return target


def setup_pyodide(assets_dir: Path | None = None, *, progress: Progress | None = None) -> Path:
    """Fetch the pinned Pyodide package (once) and build the engine's memory snapshot.

    Idempotent and fast when everything is in place. The only step that uses the network is
    the download of the npm tarball, whose sha512 must match `package-lock.json`.

    Returns:
        The assets folder (pass it to `PyodideEngine(assets_dir=...)`).

    Raises:
        EngineUnavailable: the download, the integrity check or the snapshot build failed.
    """
    say = progress or _quiet
    root = (assets_dir or default_assets_dir()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    assets = locate(root)
    if assets is None:
        integrity = pinned_integrity()
        with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
            try:
                tarball = _fetch_tarball(Path(tmp), say)
            except (OSError, subprocess.SubprocessError) as exc:
                raise EngineUnavailable(
                    f"could not download pyodide {PYODIDE_VERSION} from npm: {exc}; check the "
                    "network (or npm's registry setting) and run `sandgate setup pyodide` again"
                ) from exc
            _check_integrity(tarball, integrity)
            say(f"pyodide: unpacking {tarball.name}")
            unpacked = Path(tmp) / "unpacked"
            with tarfile.open(tarball) as tar:
                tar.extractall(unpacked, filter="data")
            package = unpacked / "package"
            missing = [name for name in _REQUIRED if not (package / name).is_file()]
            if missing:
                raise EngineUnavailable(f"the pyodide package lacks {missing}; got {tarball}")
            (package / _READY_MARK).write_text(f"{PYODIDE_VERSION}\n{integrity}\n")
            final = root / f"pyodide-{PYODIDE_VERSION}"
            shutil.rmtree(final, ignore_errors=True)
            package.rename(final)
        assets = locate(root)
        assert assets is not None
    if not assets.snapshot.is_file():
        build_snapshot(assets, progress=say)
    for stale in root.glob("snapshot-*.bin"):  # left by other versions of sandgate
        if stale != assets.snapshot:
            stale.unlink(missing_ok=True)
    say(f"pyodide: ready in {root}")
    return root


def build_snapshot(assets: Assets, *, progress: Progress | None = None) -> Path:
    """Boot Pyodide once under Deno, load the guest harness and save a memory snapshot.

    Processes booted from it are ready in well under a second instead of several.

    Raises:
        EngineUnavailable: Deno could not build it.
    """
    say = progress or _quiet
    say("pyodide: building the memory snapshot (boots Pyodide once, ~5-15 s)")
    began = time.monotonic()
    partial = assets.snapshot.with_suffix(f".{os.getpid()}.partial")
    command = [
        find_deno(),
        "run",
        *deno_common_flags(),
        f"--allow-read={assets.pyodide_dir},{GUEST_SCRIPT}",
        f"--allow-write={partial}",
        str(HOST_SCRIPT),
        "snapshot",
        str(assets.pyodide_dir),
        str(GUEST_SCRIPT),
        str(partial),
    ]
    try:
        done = subprocess.run(
            command,
            env=deno_environment(assets),
            cwd=assets.pyodide_dir,
            capture_output=True,
            text=True,
            timeout=SNAPSHOT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineUnavailable(f"could not run Deno to build the Pyodide snapshot: {exc}") from exc
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise EngineUnavailable(
            f"Deno could not build the Pyodide snapshot (exit {done.returncode}): "
            f"{done.stderr.strip()[-800:]}"
        )
    partial.rename(assets.snapshot)
    say(f"pyodide: snapshot built in {time.monotonic() - began:.1f} s")
    return assets.snapshot


def deno_common_flags() -> list[str]:
    """Flags of every Deno run: no prompts, no config, nothing remote, no host capabilities."""
    return [
        "--quiet",
        "--no-prompt",
        "--no-config",
        "--no-lock",
        "--no-remote",
        "--deny-net",
        "--deny-env",
        "--deny-run",
        "--deny-ffi",
        "--deny-sys",
        "--deny-import",
    ]


def deno_environment(assets: Assets) -> dict[str, str]:
    """Deno's whole environment: none of the server's variables reach it."""
    return {
        "DENO_NO_UPDATE_CHECK": "1",
        "DENO_DIR": str(assets.root / "deno-dir"),
        "NO_COLOR": "1",
        "PATH": "/usr/bin:/bin",
        "HOME": str(assets.root),
        "LANG": "C.UTF-8",
    }
