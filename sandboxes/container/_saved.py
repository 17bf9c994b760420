"""Saved interpreter containers (`Capabilities.snapshots`, gVisor only): what a folder holds.

A session's interpreter container is saved with gVisor's checkpoint (`runsc checkpoint`, through
dockerd's checkpoint API, which needs `dockerd --experimental`): the sentry writes the whole
guest (the server waiting for its next request, its stopped child with `__main__`, /tmp) into
`FOLDER/interpreter/`, and the container exits. The folder also holds `manifest.json`: the
engine kind, runtime, image id and protocol the checkpoint needs (a build fingerprint), and
the fixed limits the container was made with (`_persistent.identity`).

It is resumed into a *new* container of the same image and shape: created, its checkpoint
copied into the container's own checkpoint folder in dockerd's data root (dockerd 20.10
restores from no other place: moby#37344), attached, then started from it. The guest's stdio
is the new container's, so the server reads the next request from the new attach stream. A
folder only holds files, so it outlives the server that wrote it, and it can be resumed into
any number of containers, each independent (a fork).

runc would need CRIU; CRIU 3.17 cannot dump on this project's CI kernels (its vDSO check
fails), so runc refuses snapshots (`CapabilityMissing`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._spec import PROTOCOL

if TYPE_CHECKING:
    from ._persistent import Identity

CHECKPOINT = "interpreter"
"""The checkpoint's name: its files are in `FOLDER/interpreter/`."""
MANIFEST = "manifest.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a saved interpreter container needs to be resumed.

    Attributes:
        runtime: The OCI runtime that checkpointed it (`runsc`).
        image_id: The sandbox image's id (`sha256:…`).
        identity: Fingerprint of its fixed limits (`fingerprint`).
        memory_bytes: Its memory limit, for people reading the folder.
        processes: Its process limit, likewise.
    """

    runtime: str
    image_id: str
    identity: str
    memory_bytes: int
    processes: int

    def write(self, folder: Path) -> None:
        record = {
            "engine": "container",
            "format": FORMAT,
            "protocol": PROTOCOL,
            "runtime": self.runtime,
            "image_id": self.image_id,
            "identity": self.identity,
            "memory_bytes": self.memory_bytes,
            "processes": self.processes,
        }
        (folder / MANIFEST).write_text(json.dumps(record, indent=1) + "\n")


def fingerprint(identity: Identity) -> str:
    """A stable digest of a container's fixed limits (shape, file-size ceiling)."""
    return hashlib.sha256(repr(identity).encode()).hexdigest()


def refusal(folder: Path, *, runtime: str, image_id: str) -> str | None:
    """Why this engine cannot resume the interpreter saved in `folder` (None: it can)."""
    try:
        record = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return f"{folder} has no readable {MANIFEST} ({exc.__class__.__name__})"
    if not isinstance(record, dict):
        return f"{folder / MANIFEST} is not a JSON object"
    wanted = {
        "engine": "container",
        "format": FORMAT,
        "protocol": PROTOCOL,
        "runtime": runtime,
        "image_id": image_id,
    }
    for name, value in wanted.items():
        if record.get(name) != value:
            return f"it was saved with {name}={record.get(name)!r}, this engine has {value!r}"
    if not (folder / CHECKPOINT).is_dir():
        return f"{folder} has no {CHECKPOINT}/ checkpoint folder"
    return None


def identity_of(folder: Path) -> str | None:
    """The fixed-limits fingerprint recorded in `folder`'s manifest."""
    try:
        found = json.loads((folder / MANIFEST).read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None
