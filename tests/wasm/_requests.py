"""A wasm worker's call request, as the engine sends it over the worker's JSON-lines protocol,
for tests that drive a worker (in this process or as its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def code_request(files: Path, site: Path, source: str, **overrides: Any) -> dict[str, Any]:
    """The request to run `source` in the workspace `files` (installed packages in `site`),
    with 256 MiB of memory, a 30 s deadline and 1 MiB of output unless `overrides` say else."""
    return {
        "kind": "code",
        "source": source,
        "variable": "",
        "final_expression": False,
        "stdin": "",
        "files": str(files),
        "site": str(site),
        "deadline_s": 30.0,
        "memory_bytes": 256 << 20,
        "output_bytes": 1 << 20,
        "fuel": None,
        "may_move": True,
        "mounts": [],
        **overrides,
    }
