"""Package supply: the operator's package mirror (`mirror/`: allow-list, wheels synced
ahead of time, lock) and the installs of those wheels into a session's site folder, the only
way a session gets a package."""

from ._installs import Installer, InstallRefused

__all__ = ["InstallRefused", "Installer"]
