"""The `pyodide` engine: Pyodide (npm) under a jailed Deno (PyPI), one process per session."""

from .._mount_files import Entry, MountPathRefused, list_mounted_directory, read_image
from .._types import HostMount
from ._assets import PYODIDE_VERSION, default_assets_dir, setup_pyodide
from ._engine import DEFAULT_POOL_SIZE, PyodideEngine
from ._jail import JailInfo

__all__ = [
    "DEFAULT_POOL_SIZE",
    "PYODIDE_VERSION",
    "Entry",
    "HostMount",
    "JailInfo",
    "MountPathRefused",
    "PyodideEngine",
    "default_assets_dir",
    "list_mounted_directory",
    "read_image",
    "setup_pyodide",
]
