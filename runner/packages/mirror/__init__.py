"""The package mirror: an operator's allow-list, a local wheel mirror, and offline installs.

`sandgate mirror sync` (`sync_mirror`) is the only step that uses the network. At call time
`parse_requirement` refuses anything but a plain name with an optional `==` pin,
`check_allowed` checks it against the allow-list (with "did you mean"), and `install`
unpacks the locked, hash-verified wheels into the session's site folder: no pip, no build
step, no network.
"""

from ._allowlist import (
    ENGINES,
    AllowedPackage,
    AllowList,
    EngineName,
    allowlist_from_mapping,
    load_allowlist,
)
from ._checks import check_allowed, suggest
from ._cli import mirror_main
from ._errors import (
    AllowListError,
    HashMismatch,
    IndexUnavailable,
    InstallFailed,
    MirrorBusy,
    MirrorError,
    MirrorMissing,
    NotAllowed,
    NoWheel,
    RequirementRefused,
    UnsafeWheel,
    VersionNotAllowed,
)
from ._install import InstallResult, install, installed_packages
from ._lock import Lock, LockedPackage, default_mirror_dir, list_mirror, load_lock
from ._requirement import Requested, parse_requirement, parse_requirement_list
from ._sync import Problem, SyncFailure, SyncReport, sync_mirror, verify_mirror
from ._targets import DEFAULT_TARGETS, Target

__all__ = [
    "DEFAULT_TARGETS",
    "ENGINES",
    "AllowList",
    "AllowListError",
    "AllowedPackage",
    "EngineName",
    "HashMismatch",
    "IndexUnavailable",
    "InstallFailed",
    "InstallResult",
    "Lock",
    "LockedPackage",
    "MirrorBusy",
    "MirrorError",
    "MirrorMissing",
    "NoWheel",
    "NotAllowed",
    "Problem",
    "Requested",
    "RequirementRefused",
    "SyncFailure",
    "SyncReport",
    "Target",
    "UnsafeWheel",
    "VersionNotAllowed",
    "allowlist_from_mapping",
    "check_allowed",
    "default_mirror_dir",
    "install",
    "installed_packages",
    "list_mirror",
    "load_allowlist",
    "load_lock",
    "mirror_main",
    "parse_requirement",
    "parse_requirement_list",
    "suggest",
    "sync_mirror",
    "verify_mirror",
]
