"""A wasm worker's call request, as the engine sends it over the worker's JSON-lines protocol,
for tests that drive a worker (in this process or as its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandboxes.wasm import _worker


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


class InProcessWorker:
    """A worker's state in this process, its calls made as the worker's loop makes them."""

    def __init__(self, root: Path, *, embedded: bool = True) -> None:
        self.files, self.site = root / "files", root / "site"
        self.files.mkdir()
        self.site.mkdir()
        self.host = _worker._Host()
        warmed = _worker._warm(
            self.host,
            {"slots_dir": str(root / "slots"), "embedded": embedded, "derive_after": 2},
        )
        assert warmed["ok"], warmed["stderr"]
        self.embedded = bool(warmed["embedded"])

    def run(self, source: str, *, files: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Run `source` in this worker's workspace, or in `files`."""
        request = code_request(Path(files or self.files), self.site, source, **overrides)
        answer = _worker._run(self.host, request)
        self.host.finish(request)
        self.host.settle()
        return answer

    def close(self) -> None:
        self.host.close()
