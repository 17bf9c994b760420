"""The `sandgate` command line: `main` (serve, setup, doctor, policy, audit, approve/deny,
mirror, batch), the policy, audit and approval commands, and `doctor`.

Importing this package loads only the argument parser; each command imports what it needs
when it runs (`sandgate --help` answers at once).
"""

from ._main import main

__all__ = ["main"]
