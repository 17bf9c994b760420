"""What a run's workspace held and what the run wrote there, measured by the worker around the
run; read back by the host from the worker's answer.

The worker, not the server, walks the workspace: before the run (one walk of its files: hard
links to files outside dropped, the files and what they occupy) and after it (one walk: the
files the run wrote, what the workspace occupies, whether that is past its budget). Both walks
stay off the server's event loop and its threads, and a call's answer carries them:

- `written`: the workspace paths the run created or changed, in order;
- `held`: `[bytes, files, complete]`, the workspace's `DiskUsage` after the run (allocated
  bytes, inodes, whether every folder could be walked);
- `over`: what the workspace holds when past its budget (bytes), else null;
- `dropped_links`: the workspace paths of hard links to files outside it, unlinked before the
  run (`drop_foreign_links`; the host logs them: a worker's own log goes nowhere).

Images among the written files are read by the host (`has_images`), only when there are any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._files import IMAGE_MIME_TYPES, DiskUsage, Scan, changed, scan, scan_dropping_foreign_links
from .._types import WorkspacePaths


def before_run(request: dict[str, Any]) -> tuple[Scan, list[str]]:
    """Drop the links the host did not make from the request's workspace and walk it, in one
    walk of its files (`scan_dropping_foreign_links`); the walk, and the paths of the links
    dropped (the answer's `dropped_links`)."""
    workspace = WorkspacePaths(Path(request["files"]), Path(request["site"]))
    found, dropped = scan_dropping_foreign_links(workspace)
    return found, list(dropped)


def after_run(files: Path, before: Scan, budget: int | None) -> dict[str, Any]:
    """The answer's `written`, `held` and `over`: one walk of `files` after the run. The
    worker's watchdog stops a run that outgrows its budget; `over` catches the run that ended
    before the watchdog's first look."""
    found = scan(files)
    usage = found.usage
    over = None
    if budget is not None and (usage.bytes > budget or not usage.complete):
        over = usage.bytes
    return {
        "written": list(changed(before.files, found.files)),
        "held": [usage.bytes, usage.files, usage.complete],
        "over": over,
    }


def measured(answer: dict[str, Any]) -> tuple[tuple[str, ...], DiskUsage, int | None]:
    """The written paths, the workspace's usage and `over` of a worker's answer.

    Raises:
        ValueError: the answer does not carry them as `after_run` makes them.
    """
    written = _paths("written", answer.get("written"))
    held, over = answer.get("held"), answer.get("over")
    if not (
        isinstance(held, list)
        and len(held) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) for n in held[:2])
        and isinstance(held[2], bool)
    ):
        raise ValueError(
            f"a worker answer's 'held' should be [bytes, files, complete], got {held!r}"
        )
    if over is not None and (not isinstance(over, int) or isinstance(over, bool)):
        raise ValueError(f"a worker answer's 'over' should be bytes or null, got {over!r}")
    return written, DiskUsage(held[0], held[1], held[2]), over


def dropped_links(answer: dict[str, Any]) -> tuple[str, ...]:
    """The `dropped_links` of a worker's answer (none when it says none).

    Raises:
        ValueError: they are not a list of paths.
    """
    return _paths("dropped_links", answer.get("dropped_links") or [])


def _paths(key: str, found: object) -> tuple[str, ...]:
    """An answer's list of paths under `key` (ValueError naming it when it is not one)."""
    if not isinstance(found, list) or not all(isinstance(p, str) for p in found):
        raise ValueError(f"a worker answer's {key!r} should be a list of paths, got {found!r}")
    return tuple(found)


def has_images(written: tuple[str, ...]) -> bool:
    """Whether any written path is an image by its suffix (the host then reads them)."""
    return any(Path(path).suffix.lower() in IMAGE_MIME_TYPES for path in written)
