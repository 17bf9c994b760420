"""Session snapshots: the store on disk and the operations (take, restore, fork, list,
delete) the snapshot tools and the Python API use."""

from ._keeper import CannotSnapshot, Restored, SessionSnapshots
from ._store import SnapshotInfo, SnapshotStore, check_id

__all__ = [
    "CannotSnapshot",
    "Restored",
    "SessionSnapshots",
    "SnapshotInfo",
    "SnapshotStore",
    "check_id",
]
